"""Every registered method, from its shipped recipe, on tiny data with a tiny trained teacher.

Parametrized over ``list_methods()``: a method is covered as soon as it ships
``configs/cifar10_5k/resnet8_<name>.yaml``. Its recipe trains end to end, resumes exactly mid-run,
sends gradients to the student and the method's adapters (never to a frozen teacher), and gives
identical losses with an SFKD mask of K = 1 while K < 1 changes them. The teacher (wrn_16_2) differs from
the student (resnet8) so that adapters for channel and size mismatches are exercised. Recipes that are
variants of a method (``resnet8_kd_ls``, ``resnet8_sfkd_kd``, ...) train one tiny epoch.
"""
import copy
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from distillscope.config import load_config
from distillscope.engine import Trainer
from distillscope.methods import Outputs, create_method, list_methods

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "cifar10_5k"
TEACHER = "wrn_16_2"
# tests/conftest.py's tiny_overrides (a function-scoped fixture), needed here by a module-scoped one
TINY = [
    "epochs=2", "data.spec=shapes?n=160&size=16&n_test=40", "data.val_fraction=0.2", "data.batch_size=32",
    "data.num_workers=0", "student.name=resnet8", "optim.lr=0.05", "optim.schedule=cosine",
    "run.progress=false", "run.threads=1", "run.device=cpu", "run.precision=fp32", "run.channels_last=false",
]
VARIANTS = sorted(p for p in RECIPES.glob("resnet8_*.yaml") if p.stem.removeprefix("resnet8_") not in list_methods())


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("library-teacher") / "run"
    Trainer(load_config(None, TINY + [f"student.name={TEACHER}", "epochs=1", "method={name: ce}"]), out).fit()
    return out


def recipe_config(path: Path, teacher_dir: Path, extra=()):
    """The recipe with tiny data and, where its method needs one, the tiny trained teacher."""
    params = dict(load_config(path).method)
    overrides = list(TINY)
    method = create_method(params.pop("name"), **params)
    if method.multi_teacher:  # two copies of the tiny teacher stand in for the recipe's list
        overrides += [f"teachers=[{{name: {TEACHER}, checkpoint: '{teacher_dir}'}}, {{name: {TEACHER}, checkpoint: '{teacher_dir}'}}]"]
    elif method.needs_teacher:
        overrides += [f"teacher.name={TEACHER}", f"teacher.checkpoint={teacher_dir}"]
    return load_config(path, overrides + list(extra))


def method_recipe(name: str) -> Path:
    path = RECIPES / f"resnet8_{name}.yaml"
    if not path.is_file():
        pytest.skip(f"method {name} ships no {path.name}")
    return path


def comparable(history):
    return [{k: v for k, v in row.items() if k != "img_per_s"} for row in history]


@pytest.mark.parametrize("name", list_methods())
def test_recipe_trains_and_resumes_exactly(name, teacher_dir, tmp_path, interrupt_at):
    cfg = recipe_config(method_recipe(name), teacher_dir)
    reference = Trainer(cfg, tmp_path / "full").fit()
    assert all(math.isfinite(v) for k, v in reference["last"].items() if k.startswith("train/"))

    trainer = Trainer(cfg, tmp_path / "cut")
    interrupt_at(trainer, 5)  # the middle of epoch 2 (4 steps per epoch)
    resumed = Trainer(cfg, tmp_path / "cut", resume=True).fit()
    full = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    cut = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert comparable(cut) == comparable(full)
    assert comparable([resumed["last"]]) == comparable([reference["last"]])


@pytest.mark.parametrize("name", list_methods())
def test_gradients_reach_student_and_adapters_never_a_frozen_teacher(name, teacher_dir, tmp_path):
    trainer = Trainer(recipe_config(method_recipe(name), teacher_dir), tmp_path / "run")
    batch = next(trainer.train_loader.epoch(0))
    trainer.student.train()
    trainer.method.train()
    trainer._train_step(batch, 0)
    student = [p for p in trainer.student.parameters() if p.requires_grad]  # SimKD freezes the unused student head
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student)
    assert any(p.grad.abs().sum() > 0 for p in student)
    adapters = [(n, p) for n, p in trainer.method.named_parameters() if p.requires_grad]
    missing = [n for n, p in adapters if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient reaches method parameter(s) {missing}"
    assert not adapters or any(p.grad.abs().sum() > 0 for _, p in adapters)
    if trainer.teacher is not None and trainer.method.freeze_teacher:
        assert all(not p.requires_grad and p.grad is None for p in trainer.teacher.parameters())
        optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
        assert not any(id(p) in optimised for p in trainer.teacher.parameters())


@pytest.mark.parametrize("name", list_methods())
def test_sfkd_mask_with_k_1_changes_nothing_and_k_below_1_is_applied(name, teacher_dir, tmp_path):
    trainer = Trainer(recipe_config(method_recipe(name), teacher_dir), tmp_path / "run")
    if trainer.teacher is None and not trainer.teachers:
        pytest.skip(f"method {name} uses no teacher")
    batch = next(trainer.train_loader.epoch(0))
    with torch.no_grad():
        student = Outputs(*trainer.student_taps(batch.images))
        teacher = trainer.teacher_side.outputs(batch)
    first = teacher[0] if isinstance(teacher, list) else teacher  # multi-teacher methods: one Outputs per teacher
    keys = ["logits"] + ["features"] * bool(first.features) + ["attention"] * any(f.dim() == 4 for f in first.features.values())

    def losses(mask):
        method = copy.deepcopy(trainer.method)
        method.set_mask(mask)
        torch.manual_seed(0)
        with torch.no_grad():
            return method(student, teacher, batch, 0)

    plain = losses(None)
    exact = losses({key: 1.0 for key in keys})
    assert exact.keys() == plain.keys() and all(torch.equal(exact[k], plain[k]) for k in plain), {k: (plain[k], exact[k]) for k in plain}
    masked = losses({key: 0.2 for key in keys})
    assert any(not torch.equal(masked[k], plain[k]) for k in plain), "a mask of K = 0.2 changed no loss term"


@pytest.mark.parametrize("recipe", VARIANTS, ids=lambda p: p.stem)
def test_variant_recipes_train(recipe, teacher_dir, tmp_path):
    is_cd = yaml.safe_load(recipe.read_text())["method"]["name"] == "cd"  # one hard, then one soft epoch
    summary = Trainer(recipe_config(recipe, teacher_dir, ["epochs=2", "method.phases=[1, 1]"] if is_cd else ["epochs=1"]),
                      tmp_path / "run").fit()
    terms = {k: v for k, v in summary["last"].items() if k.startswith("train/")}
    assert all(math.isfinite(v) for v in terms.values())
    assert set(terms) - {"train/loss", "train/top1", "train/top5", "train/ce"}, "no distillation term was logged"


def test_method_cost_bench_runs_and_writes_its_section(tmp_path):
    spec = importlib.util.spec_from_file_location("method_cost", RECIPES.parents[1] / "bench" / "method_cost.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    start, end = bench.MARKERS["off"]
    out = tmp_path / "benchmarks.md"
    out.write_text(f"# Benchmarks\n\n{start}\nstale\n{end}\ntail\n")
    text = bench.main(["--quick", "--methods", "kd", "--threads", "1", "--device", "cpu", "--data", "shapes?n=256&size=16",
                       "--out", str(out)])
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    assert set(rows) == {"method", "ce", "kd"}
    assert float(rows["ce"][1]) == 1.0 and float(rows["kd"][0]) > 0 and rows["kd"][2].strip() == "0"
    written = out.read_text()
    assert written.startswith("# Benchmarks\n\n") and written.endswith(f"{end}\ntail\n") and "stale" not in written and text in written

    warm = bench.main(["--quick", "--methods", "kd,crd,fitnet", "--teacher-cache", "warm", "--threads", "1", "--device", "cpu",
                       "--data", "shapes?n=256&size=16", "--out", str(out)])
    cached = {line.split("|")[1].strip(): line.split("|")[5].strip() for line in warm.splitlines()
              if line.startswith("| ") and "---" not in line}
    assert cached == {"method": "teacher outputs cached", "ce": "", "kd": "logits", "crd": "logits + fc@input",
                      "fitnet": "logits + block3.0.relu1"}  # tiny images: even a stage map fits
    assert text in out.read_text() and warm in out.read_text()  # two sections side by side


@pytest.mark.parametrize("k", [0.1, 0.99])
def test_a_feature_mask_that_keeps_every_nonzero_entry_of_a_relu_map_is_reported(k, teacher_dir, tmp_path):
    """FitNet's teacher map comes after a ReLU: a mask keeping ceil(K·N) entries is the identity on a sample
    with at most that many nonzero entries; the run says so when that holds for all of 64 training images."""
    from distillscope.data import Loader
    from distillscope.models import FeatureTaps

    trainer = Trainer(recipe_config(method_recipe("fitnet"), teacher_dir, [f"method.mask.features={k}"]), tmp_path / "run")
    spec = trainer.teacher_taps.taps["hint"]
    images = next(Loader(trainer.data.train, 64, trainer.data.mean, trainer.data.std).epoch(0)).images
    with torch.no_grad(), FeatureTaps(trainer.teacher, {"f": spec}) as taps:
        feature = taps(images)[1]["f"].flatten(1)
    assert feature.min() >= 0
    nonzero = (feature != 0).sum(1)
    identity = bool((nonzero <= math.ceil(k * feature.shape[1])).all())
    assert identity == (k == 0.99)  # the tiny teacher's map: between 10% and 99% nonzero on every image
    warnings = [w for w in trainer.method.run_warnings if "unchanged" in w]
    if identity:
        share = (nonzero.float() / feature.shape[1]).max().item()
        assert warnings == [f"the SFKD mask leaves teacher tap '{spec}' unchanged on 64 training images: at most {share:.0%} of its "
                            "entries are nonzero (a map after a ReLU is mostly zeros) and K keeps them all; "
                            f"choose K below {share:.2f} to mask it"]
    else:
        assert warnings == []
