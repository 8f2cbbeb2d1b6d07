"""A refactor changes no behaviour: record tiny deterministic runs of every recipe and one report, compare later.

    python bench/behaviour_check.py record OUT.json     # before the change
    python bench/behaviour_check.py compare OUT.json    # after: exit 1 and the differences if any number moved

Every ``configs/cifar10_5k/resnet8_*.yaml`` recipe (each method and its variants) trains 2 epochs on tiny built-in
data with ``run.deterministic=true`` from a tiny trained teacher (wrn_16_2; two copies for multi-teacher methods),
once with the teacher cache and, for ``kd``, once without; every per-epoch metric except timings is kept. Then
``distillscope explain`` of the KD student against the teacher, and every number of its report.json. Takes a few
minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("img_per_s", "seconds", "minutes", "time", "elapsed")
TINY = [
    "epochs=2", "data.spec=shapes?n=160&size=16&n_test=40", "data.val_fraction=0.2", "data.batch_size=32", "data.num_workers=0",
    "student.name=resnet8", "optim.lr=0.05", "optim.schedule=cosine", "run.progress=false", "run.threads=1", "run.device=cpu",
    "run.precision=fp32", "run.channels_last=false", "run.deterministic=true",
]
TEACHER = "wrn_16_2"


def _numbers(tree, prefix=""):
    """Every number (and string) of a JSON tree by dotted path, timings left out."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() if not any(t in key for t in TIMING)
                for k, v in _numbers(value, f"{prefix}{key}.").items()}
    if isinstance(tree, list):
        return {k: v for i, value in enumerate(tree) for k, v in _numbers(value, f"{prefix}{i}.").items()}
    if isinstance(tree, str):
        tree = tree.replace(os.environ.get("BEHAVIOUR_WORK", "\0"), "WORK")  # the temporary folder differs per call
    return {prefix.rstrip("."): tree} if isinstance(tree, (int, float, str, bool)) or tree is None else {}


def _train(recipe: Path, out: Path, teacher: Path, extra=()) -> dict:
    from distillscope.config import load_config
    from distillscope.engine import Trainer
    from distillscope.methods import create_method

    params = dict(load_config(recipe).method)
    method = create_method(params.pop("name"), **params)
    overrides = list(TINY)
    if method.multi_teacher:
        overrides.append(f"teachers=[{{name: {TEACHER}, checkpoint: '{teacher}'}}, {{name: {TEACHER}, checkpoint: '{teacher}'}}]")
    elif method.needs_teacher:
        overrides += [f"teacher.name={TEACHER}", f"teacher.checkpoint={teacher}"]
    summary = Trainer(load_config(recipe, overrides + list(extra)), out).fit()
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return _numbers({"history": history, "last": summary["last"], "best": summary.get("best"), "extra": {
        k: summary[k] for k in ("teacher_entropy", "precision", "ensemble_test_top1") if k in summary}})


def record(work: Path) -> dict:
    from distillscope.config import load_config
    from distillscope.engine import Trainer

    os.environ["DISTILLSCOPE_CACHE"], os.environ["BEHAVIOUR_WORK"] = str(work / "cache"), str(work)
    teacher = work / "teacher"
    Trainer(load_config(None, TINY + [f"student.name={TEACHER}", "epochs=1", "method={name: ce}"]), teacher).fit()
    results = {}
    for recipe in sorted((ROOT / "configs/cifar10_5k").glob("resnet8_*.yaml")):
        print(recipe.stem, flush=True)
        results[recipe.stem] = _train(recipe, work / recipe.stem, teacher)
    results["resnet8_kd (cache off)"] = _train(ROOT / "configs/cifar10_5k/resnet8_kd.yaml", work / "kd_off", teacher,
                                               ["run.teacher_cache=off"])
    subprocess.run([sys.executable, "-m", "distillscope.cli", "--threads", "1", "explain", "--student", str(work / "resnet8_kd"),
                    "--teacher", str(teacher), "--base", str(work / "resnet8_ce"), "--out", str(work / "report"), "--limit", "40",
                    "--labels", "onehot", "--device", "cpu"], check=True, cwd=ROOT)
    results["explain report.json"] = _numbers(json.loads((work / "report/report.json").read_text()))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["record", "compare"])
    parser.add_argument("file", type=Path)
    args = parser.parse_args()
    if args.action == "record" and args.file.exists():
        raise SystemExit(f"'{args.file}' exists; records are never overwritten")
    with tempfile.TemporaryDirectory() as work:
        results = record(Path(work))
    if args.action == "record":
        args.file.write_text(json.dumps(results, indent=1, sort_keys=True))
        print(f"recorded {sum(map(len, results.values()))} numbers of {len(results)} runs in {args.file}")
        return 0
    timing = lambda key: any(t in part for part in key.split(".") for t in TIMING)  # noqa: E731 (records made before a key was listed)
    before = {run: {k: v for k, v in numbers.items() if not timing(k)} for run, numbers in json.loads(args.file.read_text()).items()}
    differences = [f"{run}: {key}: {before.get(run, {}).get(key)!r} -> {results.get(run, {}).get(key)!r}"
                   for run in sorted(set(before) | set(results))
                   for key in sorted(set(before.get(run, {})) | set(results.get(run, {})))
                   if before.get(run, {}).get(key) != results.get(run, {}).get(key)]
    print("\n".join(differences[:200]) or f"identical: {sum(map(len, results.values()))} numbers of {len(results)} runs")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
