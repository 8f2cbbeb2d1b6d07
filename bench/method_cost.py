"""Method cost: ms per training step of every registered single-teacher KD method, and its extra parameters, vs the CE step.

One pair, teacher wrn_40_2 -> student resnet8, batch 64, fp32, batches of the real CIFAR-10 subset when
present (else generated shapes). The teacher has random weights, saved once to a temporary checkpoint:
a step's cost does not depend on them. Per method one ``Trainer`` is built from its recipe
``configs/cifar10_5k/resnet8_<name>.yaml`` when there is one (its method parameters; else the method's
defaults), with data, models, batch size and precision overridden as above and its training loader cut
to the first ``steps * 64`` rows, so one ``train_epoch`` is exactly ``steps`` full steps (student and
teacher forward, method losses, backward, SGD step, metric accumulation; no evaluation). By default the
teacher cache is off: every method pays its teacher forward, as in mdistiller. ``--teacher-cache warm`` runs with
``run.teacher_cache=auto`` on a temporary cache root, filled by the warm-up epoch, and every timed epoch
replays epoch 0's batches and views, so a method whose teacher outputs (logits and tapped features) fit the
cache never runs the teacher; the others (``run.teacher_cache_max_gib``) still do. The table shows which.

Every method gets one untimed warm-up epoch, then ``--rounds`` interleaved rounds: in each round every
method trains one epoch, in an order rotated by one per round, so drifts in machine load spread over all
methods. Reported: the median ms per step, its ratio to ``ce``'s median, and the method's trainable
parameters (adapters, projectors; the student's are not counted). The load average before and after
is recorded: on a shared CPU, other jobs inflate every method alike but add noise to the ratios.

    python bench/method_cost.py [--steps 20] [--rounds 3] [--methods ce,kd,dkd] [--teacher-cache off|warm]
                                [--device auto] [--threads N] [--data SPEC] [--out docs/benchmarks.md] [--quick]
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
from unittest import mock
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from distillscope.config import load_config  # noqa: E402
from distillscope.engine import Trainer, save_checkpoint  # noqa: E402
from distillscope.engine.device import describe_machine  # noqa: E402
from distillscope.methods import create_method, list_methods  # noqa: E402
from distillscope.models import create_model  # noqa: E402

RECIPES = common.ROOT / "configs" / "cifar10_5k"
TEACHER, STUDENT, BATCH = "wrn_40_2", "resnet8", 64
MARKERS = {mode: (f"<!-- {name}:start -->", f"<!-- {name}:end -->")
           for mode, name in (("off", "method_cost"), ("warm", "method_cost_warm"))}


def _random_teacher(folder: Path, num_classes: int) -> Path:
    path = folder / "teacher.safetensors"
    model = create_model(TEACHER, num_classes=num_classes)
    save_checkpoint(path, {f"model.{k}": v for k, v in model.state_dict().items()}, {"model": TEACHER, "num_classes": num_classes})
    return path


def _trainer(name: str, spec: str, device: str, threads: int | None, steps: int, teacher: Path | None, out: Path, cache: str) -> Trainer:
    recipe = RECIPES / f"resnet8_{name}.yaml"
    overrides = [
        f"student.name={STUDENT}", f"data.batch_size={BATCH}", "data.num_workers=0", "run.precision=fp32", "run.channels_last=false",
        f"run.teacher_cache={'off' if cache == 'off' else 'auto'}", "run.teacher_cache_max_gib=4",
        "run.progress=false", f"run.device={device}", *([f"run.threads={threads}"] if threads else []),
    ]
    if not recipe.is_file():
        overrides.append(f"method.name={name}")
    if create_method(name).needs_teacher:
        overrides += [f"teacher.name={TEACHER}", f"teacher.checkpoint={teacher}"]
    cfg = load_config(recipe if recipe.is_file() else None, overrides, data_spec=spec)
    trainer = Trainer(cfg, out)
    trainer.train_loader = common.subset_loader(trainer, min(steps, len(trainer.train_loader)), BATCH)
    return trainer


def _epoch_seconds(trainer: Trainer, epoch: int) -> float:
    trainer.step_in_epoch = 0  # as Trainer.fit does between epochs
    return common.timed(lambda: trainer.train_epoch(epoch), trainer.device)


def _cached(trainer: Trainer) -> str:
    if trainer.teacher_cache is None:
        return "no" if trainer.teacher is not None else ""
    return trainer.teacher_cache.storage.describe()


def measure(methods: list[str], spec: str, device: str, steps: int, rounds: int, threads: int | None, cache: str = "off") -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, DISTILLSCOPE_CACHE=tmp):
        make = lambda name, teacher: _trainer(name, spec, device, threads, steps, teacher, Path(tmp) / name, cache)  # noqa: E731
        trainers = {"ce": make("ce", None)}
        teacher = _random_teacher(Path(tmp), trainers["ce"].data.num_classes)
        trainers.update({name: make(name, teacher) for name in methods if name != "ce"})
        for trainer in trainers.values():
            _epoch_seconds(trainer, 0)  # warm-up (and, with a cache, its filling)
        times: dict[str, list[float]] = {name: [] for name in methods}
        for r in range(1, rounds + 1):
            order = methods[r % len(methods):] + methods[: r % len(methods)]
            for name in order:
                times[name].append(_epoch_seconds(trainers[name], 0 if cache == "warm" else r))
        results = []
        for name, trainer in trainers.items():
            trainer.logger.close()
            n = len(trainer.train_loader)
            extra = sum(p.numel() for p in trainer.method.parameters() if p.requires_grad)
            results.append({"method": name, "ms": 1000 * statistics.median(times[name]) / n, "extra": extra, "steps": n,
                            "device": trainer.device, "cached": _cached(trainer)})
    base = next((r["ms"] for r in results if r["method"] == "ce"), None)
    for r in results:
        r["ratio"] = r["ms"] / base if base else float("nan")
    return results


def render(results: list[dict], spec: str, command: str, load: tuple[float, float], threads: int, cache: str = "off") -> str:
    device = results[0]["device"]
    warm = cache == "warm"
    lines = [
        ("## Method cost with a warm teacher cache: ms per training step vs the CE step" if warm
         else "## Method cost: ms per training step vs the CE step"),
        "",
        f"- machine: {describe_machine(device)}; torch {torch.__version__}, {threads} threads; device {device}",
        f"- load average (1 min) before / after: {load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} cores"
        + (" — the CPU was shared with other jobs" if max(load) > 1.5 else ""),
        f"- date: {common.now()}; data `{spec}`; {TEACHER} -> {STUDENT}, batch {BATCH}, fp32, {results[0]['steps']} steps per timed epoch",
        f"- command: `{command}`",
        "- reference (mdistiller, GPU, ms per batch): KD 11, DKD 11, FitNet 14, OFD 19, RKD 25, ReviewKD 26, CRD 41",
        "",
        "| method | ms / step | ratio to ce | extra parameters |" + (" teacher outputs cached |" if warm else ""),
        "|---|---:|---:|---:|" + ("---|" if warm else ""),
    ]
    lines += [f"| {r['method']} | {r['ms']:.1f} | {r['ratio']:.2f} | {r['extra']:,} |" + (f" {r['cached']} |" if warm else "")
              for r in results]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = common.parser(__doc__)
    p.add_argument("--steps", type=int, default=20, help="steps per timed epoch")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timed epochs per method (median reported)")
    p.add_argument("--teacher-cache", choices=["off", "warm"], default="off",
                   help="off: every method runs its teacher (default); warm: teacher outputs read from a filled cache where they fit")
    p.add_argument("--methods", default=None,
                   help="comma-separated method names (default: every registered single-teacher KD method; "
                        "self-distillation has bench/self_distill_cost.py); ce is always added")
    common.add_run_args(p, "method_cost", "2 steps, 1 round")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.rounds = 2, 1
    methods = (args.methods.split(",") if args.methods
               else [m for m in list_methods() if create_method(m).needs_teacher and not create_method(m).multi_teacher])
    methods = ["ce"] + [m for m in methods if m != "ce"]
    spec = common.data_spec(args.data)
    load_before = os.getloadavg()[0]
    results = measure(methods, spec, args.device, args.steps, args.rounds, args.threads, args.teacher_cache)
    load = (load_before, os.getloadavg()[0])
    text = render(results, common.shown_spec(spec), common.command("method_cost.py", argv), load, torch.get_num_threads(),
                  args.teacher_cache)
    return common.publish(text, args.out, *MARKERS[args.teacher_cache])


if __name__ == "__main__":
    main()
