"""Time and peak memory of ``distillscope explain`` (Grad-CAM, UniCAM, FSS/RS on clean and ROAD-LeRF inputs).

The cost does not depend on the weights, so the teacher, student and base are freshly initialised zoo models
saved as checkpoints in a temporary folder. Peak memory is the process's peak resident set size (and the
peak CUDA allocation on a GPU), measured in this process after the data and models were loaded once.

    python bench/explain_cost.py [--data SPEC] [--limit N] [--teacher wrn_40_2] [--student resnet8]
                                 [--layers stage:0 stage:1 stage:-1] [--device auto] [--out docs/benchmarks.md]
"""
from __future__ import annotations

import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from distillscope.data import load_data  # noqa: E402
from distillscope.engine.checkpoint import prefixed, save_checkpoint  # noqa: E402
from distillscope.engine.device import pick_device  # noqa: E402
from distillscope.explain import ExplainSettings, run_explain  # noqa: E402
from distillscope.models import create_model  # noqa: E402

START, END = "<!-- explain_cost:start -->", "<!-- explain_cost:end -->"
CIFAR10_5K = "cifar10:../shared/datasets/cifar10-5k/cifar-10-batches-py"


def _checkpoint(folder: Path, name: str, model: str, data) -> Path:
    net = create_model(model, num_classes=data.num_classes)
    state = {"model": model, "num_classes": data.num_classes, "mean": list(data.mean), "std": list(data.std)}
    save_checkpoint(folder / name / "best.safetensors", prefixed("model", net.state_dict()), state)
    return folder / name


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> str:
    parser = common.parser(__doc__)
    parser.add_argument("--data", default=CIFAR10_5K)
    parser.add_argument("--limit", type=int, help="first N test images (default: all)")
    parser.add_argument("--teacher", default="wrn_40_2")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--layers", nargs="+", default=["stage:0", "stage:1", "stage:-1"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", help="markdown file whose explain_cost section is replaced (or appended)")
    args = parser.parse_args(argv)

    data = load_data(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        runs = {role: _checkpoint(folder, role, model, data)
                for role, model in (("teacher", args.teacher), ("student", args.student), ("base", args.student))}
        settings = ExplainSettings(student=str(runs["student"]), teacher=str(runs["teacher"]), base=str(runs["base"]), data=args.data,
                                   out=str(folder / "explain"), layers=args.layers, labels="onehot", batch_size=args.batch_size,
                                   limit=args.limit, device=args.device, progress=False)
        rss_before = _peak_rss_mib()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        started, cpu_started = time.perf_counter(), time.process_time()
        result = run_explain(settings)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    device = str(pick_device(args.device))
    gpu = f"; peak CUDA allocation {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if device.startswith("cuda") else ""
    command = common.command("explain_cost.py", argv if argv is not None else sys.argv[1:])
    text = "\n".join([
        START,
        "## `distillscope explain`: time and peak memory",
        "",
        f"- machine: {platform.processor() or platform.machine()}, {common.torch_threads()}, device {device}; "
        f"{common.now()}",
        f"- command: `{command}`",
        f"- teacher {args.teacher}, student and base {args.student}; layers {' '.join(args.layers)}; batch {args.batch_size}; "
        f"{result['settings']['images']} test images of `{args.data}`; "
        "scores on clean and ROAD-LeRF (fraction 0.5) inputs vs teacher and base",
        "",
        "| images | wall time | CPU time (all threads) | wall per image | peak RSS (process) | peak RSS before explain |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {result['settings']['images']} | {seconds:.1f} s | {cpu_seconds:.1f} s | "
        f"{1000 * seconds / result['settings']['images']:.0f} ms "
        f"| {_peak_rss_mib():.0f} MiB | {rss_before:.0f} MiB |",
        "",
        f"Peak RSS includes torch and the data (the 'before' column){gpu}. On a shared machine the wall time is inflated; "
        "the CPU time is the better measure of the work.",
        END,
    ])
    return common.publish_block(text, args.out, START, END)


if __name__ == "__main__":
    main()
