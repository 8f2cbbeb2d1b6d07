"""Engine overhead: images/s of the Trainer's CE step vs a bare PyTorch loop, side by side.

Per case (model x precision, batch 64) one ``Trainer`` is built with method ``ce`` and
``run.progress=false``. Its ``train_loader`` is swapped for a loader over the first
``steps * 64`` training rows (same mean/std/device/augmentation settings), so one
``trainer.train_epoch(e)`` is exactly ``steps`` batches. The bare loop iterates that same
loader's ``epoch(e)``: both sides see the same images with the same on-the-fly augmentation.
The bare loop trains its own model (same architecture, weights copied from the trainer's
student before any step, same memory format) with ``torch.optim.SGD`` (same hyper-parameters),
``torch.autocast`` (same device/dtype), ``F.cross_entropy``, ``zero_grad(set_to_none=True)``,
backward and step, in the same process (same thread count).

Each side gets one untimed warm-up epoch, then ``--rounds`` interleaved timed epochs
(ours, bare, ours, bare, ...; round r uses epoch r on both sides); the median time per side
is reported. Target: our step takes at most 1.10x the bare loop's time (ratio <= 1.10).

    python bench/engine_overhead.py [--steps 60] [--rounds 3] [--models resnet20,resnet8x4]
                                    [--device auto] [--threads N] [--data SPEC] [--out docs/benchmarks.md] [--quick]
"""
from __future__ import annotations

import functools
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from distillscope.config import load_config  # noqa: E402
from distillscope.engine.trainer import Trainer  # noqa: E402
from distillscope.models import create_model  # noqa: E402

BATCH = 64
SETTINGS = common.SETTINGS
START, END = "<!-- engine_overhead:start -->", "<!-- engine_overhead:end -->"
write_section = functools.partial(common.write_section, start=START, end=END)  # write_section(path, text)
_settings = common.settings


def _case(model: str, setting: str, spec: str, device: str, steps: int, rounds: int, threads: int | None, tmp: str) -> dict:
    threads_set = [f"run.threads={threads}"] if threads else []
    cfg = load_config(overrides=[*threads_set, f"student.name={model}", "method={name: ce}", "run.progress=false", f"run.device={device}",
                                 f"data.batch_size={BATCH}", *SETTINGS[setting]], data_spec=spec)
    trainer = Trainer(cfg, Path(tmp) / f"{model}-{setting}")
    steps = min(steps, len(trainer.data.train) // BATCH)
    loader = trainer.train_loader = common.subset_loader(trainer, steps, BATCH)

    bare = create_model(model, num_classes=trainer.data.num_classes)
    bare.load_state_dict(trainer.student.state_dict())
    bare = bare.to(trainer.device, memory_format=trainer.memory_format).train()
    o = cfg.optim
    opt = torch.optim.SGD(bare.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)
    dev, amp = trainer.device, trainer.amp_dtype

    def ours(epoch: int) -> None:
        trainer.step_in_epoch = 0  # as Trainer.fit does between epochs
        trainer.train_epoch(epoch)

    def bare_epoch(epoch: int) -> None:
        for batch in loader.epoch(epoch):
            with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = F.cross_entropy(bare(batch.images), batch.targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    ours(0)  # warm-up
    bare_epoch(0)
    times = {"ours": [], "bare": []}
    for r in range(1, rounds + 1):
        times["ours"].append(common.timed(lambda: ours(r), dev))
        times["bare"].append(common.timed(lambda: bare_epoch(r), dev))
    t_ours, t_bare = statistics.median(times["ours"]), statistics.median(times["bare"])
    trainer.logger.close()
    images = steps * BATCH
    return {"model": model, "precision": setting, "steps": steps, "device": dev, "ours": images / t_ours, "bare": images / t_bare,
            "ratio": t_ours / t_bare}


def render(results: list[dict], spec: str, command: str) -> str:
    lines = [
        "## Engine overhead: Trainer CE step vs bare PyTorch loop",
        "",
        f"- machine: {common.cores()}; {common.torch_threads()}; device {common.device_name(results[0]['device'])}",
        f"- date: {common.now()}; data `{spec}`; batch {BATCH}, {results[0]['steps']} steps per timed epoch",
        f"- command: `{command}`",
        "- target: ratio (ours/bare time) <= 1.10",
        "",
        "| model | precision | ours img/s | bare img/s | ratio ours/bare time |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| {r['model']} | {r['precision']} | {r['ours']:.1f} | {r['bare']:.1f} | {r['ratio']:.3f} |" for r in results]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = common.parser(__doc__)
    p.add_argument("--steps", type=int, default=60, help="batches per timed epoch")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timed epochs per side (median reported)")
    p.add_argument("--models", default="resnet20,resnet8x4", help="comma-separated model names")
    common.add_run_args(p, "engine_overhead", "4 steps, 1 round", "torch threads (run.threads) for both sides; default: torch's")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.rounds = 4, 1
    spec = common.data_spec(args.data)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for setting in _settings(args.device):
                results.append(_case(model, setting, spec, args.device, args.steps, args.rounds, args.threads, tmp))
                print(f"# {model} {setting}: ratio {results[-1]['ratio']:.3f}", file=sys.stderr)
    text = render(results, common.shown_spec(spec), common.command("engine_overhead.py", argv))
    return common.publish(text, args.out, START, END)


if __name__ == "__main__":
    main()
