"""MLKD's strong view and median-confidence factor, the trainer's extra-view hook and the strong augmentation.

References are written out here with numpy loops, numpy's percentile or Pillow; none calls the
implementation's helpers.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from distillscope.config import load_config
from distillscope.data import Batch, denormalize, draw_strong, normalize, strong_augment
from distillscope.data.randaugment import OPS
from distillscope.engine import Trainer
from distillscope.engine.device import view_generator
from distillscope.errors import DistillscopeError
from distillscope.methods import Outputs, create_method

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "cifar10_5k" / "resnet8_mlkd_strong.yaml"
TEACHER = "wrn_16_2"
TINY = [
    "epochs=2", "data.spec=shapes?n=160&size=16&n_test=40", "data.val_fraction=0.2", "data.batch_size=32",
    "data.num_workers=0", "student.name=resnet8", "optim.lr=0.05", "optim.schedule=cosine",
    "run.progress=false", "run.threads=1", "run.device=cpu", "run.precision=fp32", "run.channels_last=false",
]


# ----------------------------------------------------------------- references
def softmax(row):
    e = np.exp(np.asarray(row, dtype=np.float64) - np.max(row))
    return e / e.sum()


def kd_ref(s, t, T):
    """T² · mean_i Σ_c p_t log(p_t / p_s)."""
    total = 0.0
    for si, ti in zip(s, t):
        p_s, p_t = softmax(si / T), softmax(ti / T)
        total += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    return T * T * total / len(s)


def gram_ref(s, t, T, level):
    p_s = np.stack([softmax(r / T) for r in s])
    p_t = np.stack([softmax(r / T) for r in t])
    b, c = p_s.shape
    if level == "batch":
        return sum(sum(p_s[i, k] * p_s[j, k] - p_t[i, k] * p_t[j, k] for k in range(c)) ** 2 for i in range(b) for j in range(b)) / b
    return sum(sum(p_s[k, i] * p_s[k, j] - p_t[k, i] * p_t[k, j] for k in range(b)) ** 2 for i in range(c) for j in range(c)) / c


def ce_ref(s, y):
    return sum(-math.log(softmax(r)[k]) for r, k in zip(s, y)) / len(s)


def logits(b, c, seed, scale=3.0):
    return torch.randn(b, c, generator=torch.Generator().manual_seed(seed)) * scale


def batch_of(targets):
    n = len(targets)
    return Batch(torch.zeros(n, 3, 4, 4), torch.tensor(targets), torch.arange(n))


# ----------------------------------------------------------------- loss terms
def test_strong_view_repeats_ce_and_the_chosen_levels_on_the_second_view():
    s, t, s2, t2 = (logits(5, 4, seed) for seed in range(4))
    b = batch_of([0, 3, 1, 1, 2])
    temps = [1.0, 3.0]
    kw = dict(temperatures=temps, kd_weight=0.5, ce_weight=0.2)
    method = create_method("mlkd", **kw, strong_aug=True, strong_levels=["instance", "batch", "class"])
    assert method.needs_extra_view
    losses = method(Outputs(s, view=Outputs(s2)), Outputs(t, view=Outputs(t2)), b, 0)
    s_np, t_np, s2_np, t2_np = (x.double().numpy() for x in (s, t, s2, t2))
    expected = {
        "ce": 0.2 * ce_ref(s_np, b.targets.tolist()),
        "instance": 0.5 * sum(kd_ref(s_np, t_np, T) for T in temps),
        "batch": 0.5 * sum(gram_ref(s_np, t_np, T, "batch") for T in temps),
        "class": 0.5 * sum(gram_ref(s_np, t_np, T, "class") for T in temps),
        "ce_strong": 0.2 * ce_ref(s2_np, b.targets.tolist()),
        "instance_strong": 0.5 * sum(kd_ref(s2_np, t2_np, T) for T in temps),
        "batch_strong": 0.5 * sum(gram_ref(s2_np, t2_np, T, "batch") for T in temps),
        "class_strong": 0.5 * sum(gram_ref(s2_np, t2_np, T, "class") for T in temps),
    }
    assert losses.keys() == expected.keys()
    for key, value in expected.items():
        assert losses[key].item() == pytest.approx(value, rel=1e-4), key

    default = create_method("mlkd", **kw, strong_aug=True)(Outputs(s, view=Outputs(s2)), Outputs(t, view=Outputs(t2)), b, 0)
    assert set(default) == {"ce", "instance", "batch", "class", "ce_strong", "instance_strong"}  # as the authors' code returns
    with pytest.raises(DistillscopeError, match="strong_aug needs the outputs on the extra view"):
        method(Outputs(s), Outputs(t), b, 0)


def median_fraction_ref(values):
    """Fraction of entries ≤ the median (numpy's percentile 50, linear interpolation), counted by hand."""
    threshold = np.percentile(np.asarray(values, dtype=np.float64), 50)
    return sum(1 for v in values if v <= threshold) / len(values)


@pytest.mark.parametrize("b, c, seed", [(5, 4, 0), (6, 7, 1), (8, 3, 2)])
def test_median_mask_scales_weak_levels_by_the_fractions_at_or_below_the_median(b, c, seed):
    s, t, s2, t2 = (logits(b, c, seed + k) for k in range(4))
    targets = [k % c for k in range(b)]
    kw = dict(temperatures=[2.0, 4.0], strong_aug=True, strong_levels=["instance", "batch", "class"])
    args = (Outputs(s, view=Outputs(s2)), Outputs(t, view=Outputs(t2)), batch_of(targets), 0)
    plain = create_method("mlkd", **kw)(*args)
    masked = create_method("mlkd", **kw, median_mask=True)(*args)
    probs = [softmax(r) for r in t.double().numpy()]
    samples = median_fraction_ref([max(p) for p in probs])
    classes = median_fraction_ref([sum(p[k] for p in probs) for k in range(c)])
    assert masked["instance"].item() == pytest.approx(samples * plain["instance"].item(), rel=1e-6)
    assert masked["batch"].item() == pytest.approx(samples * plain["batch"].item(), rel=1e-6)
    assert masked["class"].item() == pytest.approx(classes * plain["class"].item(), rel=1e-6)
    for key in ("ce", "ce_strong", "instance_strong", "batch_strong", "class_strong"):  # not scaled
        assert torch.equal(masked[key], plain[key]), key


def test_median_mask_counts_ties_at_the_median():
    t = torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])  # confidences a, a, a, b > a
    s = logits(4, 3, 0)
    plain = create_method("mlkd", temperatures=[1.0])(Outputs(s), Outputs(t), batch_of([0, 1, 2, 0]), 0)
    masked = create_method("mlkd", temperatures=[1.0], median_mask=True)(Outputs(s), Outputs(t), batch_of([0, 1, 2, 0]), 0)
    assert masked["instance"].item() == pytest.approx(0.75 * plain["instance"].item(), rel=1e-6)  # 3 of 4 at the median


def test_sfkd_mask_reaches_the_teacher_view():
    s, t, s2, t2 = (logits(4, 6, seed) for seed in range(4))
    args = (Outputs(s, view=Outputs(s2)), Outputs(t, view=Outputs(t2)), batch_of([0, 1, 2, 3]), 0)
    plain = create_method("mlkd", strong_aug=True)(*args)
    kept = create_method("mlkd", strong_aug=True, mask={"logits": 1.0})(*args)
    masked = create_method("mlkd", strong_aug=True, mask={"logits": 0.3})(*args)
    assert all(torch.equal(kept[k], plain[k]) for k in plain)
    assert not torch.equal(masked["instance_strong"], plain["instance_strong"])


@pytest.mark.parametrize("bad, match", [
    ({"strong_levels": ["instance", "pixel"]}, "strong_levels="), ({"strong_levels": "instance"}, "strong_levels="),
    ({"strong_ops": -1}, "num_ops="), ({"strong_magnitude": 1.5}, "magnitude="),
])
def test_bad_strong_options_are_refused(bad, match):
    with pytest.raises(DistillscopeError, match=match):
        create_method("mlkd", **bad)


# ----------------------------------------------------------------- the augmentation
def images(n=6, size=12, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def one_op(name, n, strength, sign=1.0):
    return {"op": torch.full((1, n), OPS.index(name)), "strength": torch.full((1, n), strength), "sign": torch.full((1, n), sign),
            "side": torch.zeros(n), "cy": torch.zeros(n), "cx": torch.zeros(n)}


def test_strong_view_is_a_function_of_seed_epoch_and_step_and_changes_images():
    x = images(16, 16)
    view = lambda *key: strong_augment(x, draw_strong(len(x), view_generator(*key)))  # noqa: E731
    first = view(0, 1, 2)
    assert first.dtype == torch.uint8 and first.shape == x.shape
    assert torch.equal(first, view(0, 1, 2))
    for other in [(1, 1, 2), (0, 2, 2), (0, 1, 3), (0, 1, 2, 1)]:
        assert not torch.equal(first, view(*other)), other
    changed = (first != x).flatten(1).any(1)
    assert changed.float().mean() >= 0.75, changed


@pytest.mark.parametrize("name, strength, reference", [
    ("equalize", 0.3, lambda im: ImageOps.equalize(im)),
    ("autocontrast", 0.3, lambda im: ImageOps.autocontrast(im)),
    ("solarize", 0.5, lambda im: ImageOps.solarize(im, 128)),  # threshold 256 · (1 − s)
    ("posterize", 0.5, lambda im: ImageOps.posterize(im, 6)),  # round(8 − 4 s) bits
    ("identity", 0.7, lambda im: im),
])
def test_point_ops_match_pillow(name, strength, reference):
    x = images(4, 10, seed=3)
    x[1] = x[1] // 4 + 100  # a narrow histogram
    x[2, 0] = 17  # a flat channel
    out = strong_augment(x, one_op(name, 4, strength))
    for i in range(4):
        expected = np.asarray(reference(Image.fromarray(x[i].permute(1, 2, 0).numpy())))
        assert np.array_equal(out[i].permute(1, 2, 0).numpy(), expected), (name, i)


def test_translate_and_cutout_by_hand():
    x = images(2, 10)
    moved = strong_augment(x, one_op("translate_x", 2, 1.0))  # 0.3 · 10 = 3 pixels
    assert torch.equal(moved[..., 3:], x[..., :7]) and (moved[..., :3] == 0).all()
    moved = strong_augment(x, one_op("translate_y", 2, 1.0, sign=-1.0))
    assert torch.equal(moved[..., :7, :], x[..., 3:, :]) and (moved[..., 7:, :] == 0).all()
    draw = one_op("identity", 2, 0.0)
    draw.update(side=torch.tensor([0.5, 0.0]), cy=torch.tensor([0.5, 0.5]), cx=torch.tensor([0.0, 0.5]))
    cut = strong_augment(x, draw)
    expected = x.clone()
    expected[0, :, 2:7, 0:2] = 128  # 5 pixels a side from ⌊5 − 2.5⌋ = 2 (rows) and ⌊0 − 2.5⌋ = −3 (columns, clipped)
    assert torch.equal(cut, expected)


def test_denormalize_inverts_normalize_exactly():
    x = torch.arange(256, dtype=torch.uint8).repeat(3, 1).view(1, 3, 16, 16)
    mean, std = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
    for channels_last in (False, True):
        assert torch.equal(denormalize(normalize(x, mean, std, channels_last=channels_last), mean, std), x)


# ----------------------------------------------------------------- in the trainer
@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlkd-teacher") / "run"
    Trainer(load_config(None, TINY + [f"student.name={TEACHER}", "epochs=1", "method={name: ce}"]), out).fit()
    return out


def strong_config(teacher_dir, extra=()):
    return load_config(RECIPE, TINY + [f"teacher.name={TEACHER}", f"teacher.checkpoint={teacher_dir}", *extra])


def test_trainer_runs_both_models_on_the_view_and_gradients_reach_only_the_student(teacher_dir, tmp_path):
    trainer = Trainer(strong_config(teacher_dir), tmp_path / "run")
    assert trainer.teacher_cache is not None  # run.teacher_cache=auto still serves the weak view
    seen = {}
    original = trainer.method.forward

    def record(student, teacher, batch, epoch):
        seen.update(student=student, teacher=teacher, batch=batch)
        return original(student, teacher, batch, epoch)

    trainer.method.forward = record
    batch = next(trainer.train_loader.epoch(0))
    trainer.student.train()
    trainer._train_step(batch, 0)
    student, teacher = seen["student"], seen["teacher"]
    assert student.view.logits.requires_grad and not teacher.view.logits.requires_grad
    with torch.no_grad():  # the teacher's view outputs are the teacher's logits on that very view
        pixels = denormalize(batch.images, trainer.data.mean, trainer.data.std)
        view = trainer.method.extra_view(pixels, view_generator(trainer.cfg.seed, 0, 0))
        expected = trainer.teacher(normalize(view, trainer.data.mean, trainer.data.std))
    assert torch.allclose(teacher.view.logits, expected, atol=1e-5)
    assert not torch.equal(teacher.view.logits, teacher.logits)
    params = [p for p in trainer.student.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params) and any(p.grad.abs().sum() > 0 for p in params)
    assert all(not p.requires_grad and p.grad is None for p in trainer.teacher.parameters())


def test_strong_recipe_trains_and_resumes_exactly(teacher_dir, tmp_path, interrupt_at):
    cfg = strong_config(teacher_dir)
    reference = Trainer(cfg, tmp_path / "full").fit()
    assert {"train/ce_strong", "train/instance_strong"} <= set(reference["last"])
    assert all(math.isfinite(v) for k, v in reference["last"].items() if k.startswith("train/"))
    interrupt_at(Trainer(cfg, tmp_path / "cut"), 5)  # the middle of epoch 2 (4 steps per epoch)
    resumed = Trainer(cfg, tmp_path / "cut", resume=True).fit()

    def rows(run):
        return [{k: v for k, v in json.loads(line).items() if k != "img_per_s"}
                for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    assert rows("cut") == rows("full")
    assert resumed["last"]["train/loss"] == reference["last"]["train/loss"]


def test_cuda_graph_is_refused_with_an_extra_view(teacher_dir, tmp_path):
    with pytest.raises(DistillscopeError, match="run.cuda_graph=true .*extra view.*set run.cuda_graph=false"):
        Trainer(strong_config(teacher_dir, ["run.cuda_graph=true"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()
