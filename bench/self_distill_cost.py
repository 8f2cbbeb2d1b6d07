"""Self-distillation cost: wall time of one whole epoch per method against CE, side by side.

One ``Trainer`` per method, all from configs/cifar10_5k/resnet20_ce.yaml (resnet20, batch 64, precision
auto, channels_last) with only ``method`` replaced. An epoch is timed as ``Trainer.fit`` runs it:
``train_epoch`` + the per-epoch evaluation on val and test + the method's prediction pass
(``_feed_predictions``; checkpoint and log writes are left out, they are the same for all). CD runs with
``phases: [1, 1000]`` over 1001 epochs, so every timed epoch is a soft epoch that updates Q̃:
with ``confusion_source: val`` it reuses the evaluation's logits, with ``train`` it makes one extra
eval-mode pass over the training set, with ``train_steps`` it gathers the training steps' predictions. Each method
gets one untimed warm-up epoch, then ``--rounds`` interleaved timed epochs (every method runs epoch r before any runs
epoch r+1); medians are reported.
Target (issue 7): CD epoch time <= 1.05x CE's.

    python bench/self_distill_cost.py [--rounds 3] [--data SPEC] [--device auto] [--threads N] [--out docs/benchmarks.md] [--quick]
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from distillscope.config import load_config  # noqa: E402
from distillscope.engine.trainer import Trainer  # noqa: E402

RECIPE = common.ROOT / "configs/cifar10_5k/resnet20_ce.yaml"
CD = "{name: cd, phases: [1, 1000], confusion_source: %s}"
CASES = {
    "ce": "{name: ce}",
    "cd, Q from val": CD % "val",
    "cd, Q from train": CD % "train",
    "cd, Q from train steps": CD % "train_steps",
    "cskd": "{name: cskd}",
    "pskd": "{name: pskd}",
    "ols": "{name: ols}",
}
START, END = "<!-- self_distill_cost:start -->", "<!-- self_distill_cost:end -->"


def _epoch(trainer: Trainer, epoch: int) -> tuple[float, float, float]:
    """Seconds spent training, evaluating val+test, and in the method's prediction pass."""
    dev, marks = trainer.device, []
    trainer.step_in_epoch = 0  # as Trainer.fit does between epochs
    for stage in range(4):
        common.sync(dev)
        marks.append(time.perf_counter())
        if stage == 0:
            trainer.train_epoch(epoch)
        elif stage == 1:
            _, outputs = trainer._epoch_row(epoch)
        elif stage == 2:
            trainer._feed_predictions(epoch, outputs)
    return marks[1] - marks[0], marks[2] - marks[1], marks[3] - marks[2]


def measure(spec: str, device: str, rounds: int, threads: int | None, extra: list[str]) -> list[dict]:
    shared = ["epochs=1001", "run.progress=false", f"run.device={device}", "data.num_workers=0",
              *([f"run.threads={threads}"] if threads else []), *extra]
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {case: Trainer(load_config(RECIPE, [*shared, f"method={method}"], spec), Path(tmp) / str(i))
                    for i, (case, method) in enumerate(CASES.items())}
        for trainer in trainers.values():
            _epoch(trainer, 1)  # warm-up (a soft epoch for CD)
        times = {case: [] for case in trainers}
        for r in range(2, rounds + 2):
            for case, trainer in trainers.items():
                times[case].append(_epoch(trainer, r))
        for trainer in trainers.values():
            trainer.logger.close()
        any_trainer = next(iter(trainers.values()))
        info = {"device": any_trainer.device, "precision": any_trainer.precision_name, "images": len(any_trainer.data.train),
                "model": any_trainer.cfg.student.name}
    results = []
    for case, rows in times.items():
        parts = [statistics.median(col) for col in zip(*rows)]
        results.append({"case": case, "train": parts[0], "eval": parts[1], "pass": parts[2],
                        "epoch": statistics.median(sum(r) for r in rows), **info})
    for r in results:
        r["ratio"] = r["epoch"] / results[0]["epoch"]
    return results


def render(results: list[dict], spec: str, command: str) -> str:
    lines = [
        "## Self-distillation cost: one epoch per method vs CE",
        "",
        f"- machine: {common.cores()}; {common.torch_threads()}; device {common.device_name(results[0]['device'])}; "
        f"precision {results[0]['precision']}",
        f"- date: {common.now()}; data `{spec}` ({results[0]['images']} training images); {results[0]['model']}, batch 64",
        f"- command: `{command}`",
        "- target: CD epoch (confusion pass included) <= 1.05x CE",
        "",
        "| method | train s | eval val+test s | prediction pass s | epoch s | epoch / CE epoch |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['case']} | {r['train']:.2f} | {r['eval']:.2f} | {r['pass']:.2f} | {r['epoch']:.2f} | {r['ratio']:.3f} |"
              for r in results]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = common.parser(__doc__)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timed epochs per method (median reported)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every method, e.g. student.name=resnet8")
    common.add_run_args(p, "self_distill_cost", "1 round")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = 1
    spec = common.data_spec(args.data)
    results = measure(spec, args.device, args.rounds, args.threads, args.set)
    text = render(results, common.shown_spec(spec), common.command("self_distill_cost.py", argv))
    return common.publish(text, args.out, START, END)


if __name__ == "__main__":
    main()
