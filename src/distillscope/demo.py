"""``distillscope demo``: teacher, CE student and KD student on the built-in shapes data, with a verdict.

The design (argued in the README) keeps the verdict stable across seeds: the data is fixed (data seed 0,
so seeds vary only initialisation, batch order and augmentation), 16×16 images keep 30 epochs inside a
few CPU minutes, the one-cycle schedule ends at lr 0 so the last epoch is not a lucky or unlucky one, and
2,000 test images keep the sampling error of a test accuracy near ±1 point. Each run keeps its own folder
(metrics, checkpoints) under the demo folder; an existing demo folder is never reused.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

from .api import fresh_folder
from .config import load_config
from .engine import Trainer
from .report.tables import mean_std

TEACHER, STUDENT = "resnet20", "resnet8"
ROLES = ("teacher", "ce_student", "kd_student")
DEFAULTS = {"epochs": 17, "n": 2000, "n_test": 1000, "size": 24}


def data_spec(n: int, n_test: int, size: int) -> str:
    return f"shapes?n={n}&seed=0&size={size}&n_test={n_test}&scale=0.3-0.44"


def demo_configs(folder: Path, seed: int, epochs: int, n: int, n_test: int, size: int) -> list[tuple[str, list[str]]]:
    """(role, overrides) for the three runs of one seed; the KD run reads the teacher's folder."""
    common = [
        f"epochs={epochs}", f"seed={seed}", f"data.spec={data_spec(n, n_test, size)}", "data.val_fraction=0.1",
        "data.batch_size=64", "optim.lr=0.1", "optim.schedule=onecycle", "optim.warmup_epochs=2", "optim.nesterov=true",
        "run.precision=auto", "run.progress=false",
    ]
    return [
        ("teacher", common + [f"name=demo-teacher-{TEACHER}", f"student.name={TEACHER}", "method.name=ce"]),
        ("ce_student", common + [f"name=demo-ce-{STUDENT}", f"student.name={STUDENT}", "method.name=ce"]),
        ("kd_student", common + [
            f"name=demo-kd-{STUDENT}", f"student.name={STUDENT}", f"teacher.name={TEACHER}",
            f"teacher.checkpoint={folder / 'teacher'}", "method.name=kd", "method.T=2.0",
            "method.kd_weight=0.9", "method.ce_weight=0.1",
        ]),
    ]


def run_demo(out: Path, seeds: list[int] = (0,), epochs: int = 17, n: int = 2000, n_test: int = 1000, size: int = 24,
             report: bool = True) -> list[dict]:
    """Train the three runs for each seed, print the table and the verdict, then (``report``) write the HTML
    report of the KD student; returns one row per run."""
    out = fresh_folder(Path(out))
    rows = []
    for seed in seeds:
        folder = out if len(seeds) == 1 else out / f"seed{seed}"
        for role, overrides in demo_configs(folder, seed, epochs, n, n_test, size):
            print(f"\n== seed {seed}: {role} ==", flush=True)
            started = time.perf_counter()
            summary = Trainer(load_config(None, overrides), folder / role).fit()
            rows.append({"role": role, "seed": seed, "summary": summary, "seconds": time.perf_counter() - started})
    print("\n" + format_table(rows))
    print("\n" + verdict(rows))
    print(f"\nRun folders (metrics.csv, best/last checkpoints): {out}")
    if report:
        from .report.html import write_demo_report

        print("\nWriting the report of the KD student (calibration, agreement, CKA, CAMs, ...)", flush=True)
        print(f"Report: {write_demo_report(out)}")
    print(f"Evaluate one again: distillscope eval {out / ('kd_student' if len(seeds) == 1 else f'seed{seeds[0]}/kd_student')} --data "
          f"'{data_spec(n, n_test, size)}'")
    return rows


def format_table(rows: list[dict]) -> str:
    """One line per run for a single seed; mean ± std over seeds (and the seeds) for several."""
    seeds = sorted({r["seed"] for r in rows})
    lines = [
        "| run | model | method | seeds | test top-1 (last) | test top-1 (best val) | time per run |",
        "|---|---|---|---|---|---|---|",
    ]
    for role in ROLES:
        runs = [r for r in rows if r["role"] == role]
        if not runs:
            continue
        s = runs[0]["summary"]
        last = mean_std([r["summary"]["last"]["test/top1"] for r in runs]) + "%"
        best = mean_std([r["summary"]["best"]["test/top1"] for r in runs if r["summary"]["best"]]) + "%"
        seconds = statistics.fmean(r["seconds"] for r in runs)
        lines.append(f"| {role} | {s['student']} | {s['method']} | {', '.join(map(str, seeds))} | {last} | {best} | {seconds:.0f} s |")
    precision, machine = rows[0]["summary"].get("precision", "?"), rows[0]["summary"].get("machine", "?")
    lines.append(f"\nprecision {precision}; {machine}")
    return "\n".join(lines)


def verdict(rows: list[dict]) -> str:
    """KD student minus CE student, and teacher minus CE student, at the last epoch, per seed."""
    by_seed: dict[int, dict[str, float]] = {}
    for r in rows:
        by_seed.setdefault(r["seed"], {})[r["role"]] = r["summary"]["last"]["test/top1"]
    complete = {s: acc for s, acc in by_seed.items() if len(acc) == len(ROLES)}
    if not complete:
        return "Verdict: incomplete (a run is missing)."
    kd_gain = [acc["kd_student"] - acc["ce_student"] for acc in complete.values()]
    teacher_gap = [acc["teacher"] - acc["ce_student"] for acc in complete.values()]
    wins = sum(g > 0 for g in kd_gain)
    text = ""
    if len(complete) > 1:
        text = "".join(
            f"seed {seed}: teacher {acc['teacher']:.2f}%, CE student {acc['ce_student']:.2f}%, KD student {acc['kd_student']:.2f}% "
            f"(KD - CE {acc['kd_student'] - acc['ce_student']:+.2f})\n"
            for seed, acc in sorted(complete.items())
        )
    text += f"Verdict: the KD student beats the CE student by {_signed(kd_gain)} points at the last epoch"
    text += f" (in {wins} of {len(kd_gain)} seeds)" if len(kd_gain) > 1 else ""
    text += f"; the teacher is {_signed(teacher_gap)} points above the CE student."
    if wins < len(kd_gain):
        text += " KD did not help in every seed here."
    return text


def _signed(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:+.2f}" + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")
