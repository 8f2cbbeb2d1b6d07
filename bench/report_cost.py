"""Time and peak memory of the HTML report (``distillscope explain``) on a small run set shaped like ``make demo``'s.

A teacher, a CE student and a KD student are trained for ``--epochs`` (the report's cost depends on the models and
the number of images, not on how well they are trained), then the whole report is built on the first ``--limit``
test images by ``distillscope explain`` in a child process, whose peak resident set size and CPU time are measured.

    python bench/report_cost.py [--data SPEC] [--limit N] [--teacher resnet20] [--student resnet8] [--out docs/benchmarks.md]
    python bench/report_cost.py --runs runs/demo [--limit N]    # an existing folder with teacher/, ce_student/, kd_student/
"""
from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from distillscope.config import load_config  # noqa: E402
from distillscope.engine import Trainer  # noqa: E402

START, END = "<!-- report_cost:start -->", "<!-- report_cost:end -->"


def _train(folder: Path, args) -> dict[str, Path]:
    shared = [f"epochs={args.epochs}", f"data.spec={args.data}", "data.val_fraction=0.1", "data.batch_size=64", "run.progress=false",
              "run.precision=fp32"]
    roles = {
        "teacher": [f"student.name={args.teacher}", "method.name=ce"],
        "ce_student": [f"student.name={args.student}", "method.name=ce"],
        "kd_student": [f"student.name={args.student}", "method.name=kd", f"teacher.name={args.teacher}",
                       f"teacher.checkpoint={folder / 'teacher'}"],
    }
    for role, overrides in roles.items():
        Trainer(load_config(None, shared + [f"name={role}"] + overrides), folder / role).fit()
    return {role: folder / role for role in roles}


def record_model(run: Path) -> str:
    return json.loads((run / "summary.json").read_text())["student"]


def main(argv: list[str] | None = None) -> str:
    parser = common.parser(__doc__)
    parser.add_argument("--data", default="shapes?n=1000&seed=0&size=16&n_test=2000")
    parser.add_argument("--limit", type=int, default=500, help="first N test images (default 500)")
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", help="folder holding teacher/, ce_student/ and kd_student/ runs (e.g. a demo folder): no training")
    parser.add_argument("--out", help="markdown file whose report_cost section is replaced (or appended)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        runs = {role: Path(args.runs) / role for role in ("teacher", "ce_student", "kd_student")} if args.runs else _train(Path(tmp), args)
        out = Path(tmp) / "report"
        report = [sys.executable, "-m", "distillscope.cli", "explain", "--student", str(runs["kd_student"]),
                  "--teacher", str(runs["teacher"]), "--base", str(runs["ce_student"]), "--limit", str(args.limit), "--labels", "onehot",
                  "--device", args.device, "--out", str(out)]
        started = time.perf_counter()
        subprocess.run(report, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        child = resource.getrusage(resource.RUSAGE_CHILDREN)
        record = json.loads((out / "report.json").read_text())
        size_kib = (out / "report.html").stat().st_size / 1024
        models = {role: record_model(run) for role, run in runs.items()}  # read before the temporary runs are deleted
    sections = {k: v for k, v in record["seconds"].items() if k != "total" and k not in record["skipped"]}
    command = common.command("report_cost.py", argv if argv is not None else sys.argv[1:])
    text = "\n".join([
        START,
        "## The HTML report (`distillscope explain`): time and peak memory",
        "",
        f"- machine: {platform.processor() or platform.machine()}, {common.torch_threads()}, device {args.device}; "
        f"{common.now()}",
        f"- command: `{command}`",
        f"- teacher {models['teacher']}, KD student and CE base {models['kd_student']} (as `make demo`); "
        f"{record['images']} test images of `{record['data']}`; "
        f"every section except {', '.join(record['skipped']) or 'none'} (not applicable); "
        "defaults otherwise (CKA on 500 images, t-SNE of 500 points, "
        "Grad-CAM/UniCAM/FSS/RS at stage:-1)",
        "",
        "| images | wall time | CPU time (all threads) | peak RSS (report process) | report.html |",
        "|---:|---:|---:|---:|---:|",
        f"| {record['images']} | {seconds:.1f} s | {child.ru_utime + child.ru_stime:.1f} s | {child.ru_maxrss / 1024:.0f} MiB | "
        f"{size_kib:.0f} KiB |",
        "",
        "Wall time per section: " + ", ".join(f"{k} {v:.1f} s" for k, v in sections.items()) + ".",
        "",
        "Peak RSS is that of the `distillscope explain` process alone (torch, data, models and every analysis). On a shared machine the "
        "wall time is inflated; the CPU time is the better measure of the work.",
        END,
    ])
    return common.publish_block(text, args.out, START, END)


if __name__ == "__main__":
    main()
