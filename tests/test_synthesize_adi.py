"""Adaptive DeepInversion (synthesize --mode adi): the competition term, its gradients, the student's KD and exact resuming."""
import copy
import math

import pytest
import torch
from torch import nn

import distillscope.synthesize as module
from distillscope.cli import main
from distillscope.engine import load_checkpoint, load_model, save_checkpoint
from distillscope.engine.checkpoint import prefixed
from distillscope.errors import DistillscopeError
from distillscope.models import create_model
from distillscope.synthesize import SynthesisSettings, competition_loss, synthesize, synthesize_batch


def _one_minus_js_by_hand(teacher_logits, student_logits, temperature):
    """1 − mean_i JS(p_i, q_i), softmax at temperature, natural log, written out with loops."""
    total = 0.0
    for t_row, s_row in zip(teacher_logits.tolist(), student_logits.tolist()):
        p = [math.exp(v / temperature) for v in t_row]
        q = [math.exp(v / temperature) for v in s_row]
        p = [v / sum(p) for v in p]
        q = [v / sum(q) for v in q]
        js = 0.0
        for pk, qk in zip(p, q):
            mk = 0.5 * (pk + qk)
            js += 0.5 * pk * math.log(pk / mk) + 0.5 * qk * math.log(qk / mk)
        total += js
    return 1.0 - total / len(teacher_logits)


def test_competition_term_equals_a_written_out_jensen_shannon():
    torch.manual_seed(0)
    teacher, student = torch.randn(5, 4) * 3, torch.randn(5, 4) * 3
    for temperature in (1.0, 3.0):
        expected = _one_minus_js_by_hand(teacher, student, temperature)
        assert competition_loss(teacher, student, temperature).item() == pytest.approx(expected, abs=1e-6)
    # opposite one-hot-like distributions at T = 1 come close to the bound JS = ln 2
    far = torch.tensor([[50.0, 0.0]]), torch.tensor([[0.0, 50.0]])
    assert competition_loss(*far, 1.0).item() == pytest.approx(1 - math.log(2), abs=1e-6)


def test_competition_term_is_one_with_zero_gradient_when_the_student_is_the_teacher():
    torch.manual_seed(0)
    teacher = nn.Linear(6, 3)
    student = copy.deepcopy(teacher)
    x = torch.randn(4, 6, requires_grad=True)
    loss = competition_loss(teacher(x), student(x), 3.0)
    loss.backward()
    assert loss.item() == pytest.approx(1.0, abs=1e-7)
    assert x.grad.abs().max().item() < 1e-7


def test_competition_gradient_pushes_the_input_toward_disagreement():
    # teacher logits = x, student logits = 0 (it ignores x): disagreement grows as x leaves 0
    x = torch.tensor([[0.3, -0.1]], requires_grad=True)
    loss = competition_loss(x, torch.zeros(1, 2), 1.0)
    loss.backward()
    assert x.grad[0, 0].item() < 0 < x.grad[0, 1].item()  # descent raises x0 and lowers x1: further from uniform
    # a few descent steps on a random tiny pair raise the (independently computed) JS
    torch.manual_seed(1)
    teacher, student = nn.Linear(3, 4), nn.Linear(3, 4)
    x = torch.randn(2, 3, requires_grad=True)
    before = 1 - _one_minus_js_by_hand(teacher(x).detach(), student(x).detach(), 3.0)
    optimizer = torch.optim.SGD([x], lr=0.5)
    for _ in range(5):
        optimizer.zero_grad()
        competition_loss(teacher(x), student(x), 3.0).backward()
        optimizer.step()
    after = 1 - _one_minus_js_by_hand(teacher(x).detach(), student(x).detach(), 3.0)
    assert after > before + 1e-4


class _TinyBNNet(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).relu().mean((2, 3)))


def test_the_competition_term_enters_the_image_optimisation_only_with_its_weight():
    torch.manual_seed(0)
    teacher, student = _TinyBNNet().eval(), _TinyBNNet().eval().requires_grad_(False)
    teacher.requires_grad_(False)
    targets = torch.tensor([0, 1, 2])

    def run(mode, weight):
        s = SynthesisSettings(n=3, mode=mode, steps=3, size=6, competition_weight=weight)
        return synthesize_batch(teacher, targets, s, torch.Generator().manual_seed(0), "cpu", student)

    di = run("deepinversion", 10.0)
    assert torch.equal(run("adi", 0.0), di)
    assert not torch.allclose(run("adi", 10.0), di)


CLASSES = 4


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """An untrained resnet8 with non-trivial BN running statistics, saved as a distillscope checkpoint."""
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=CLASSES)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    state = {"model": "resnet8", "num_classes": CLASSES, "classes": [f"c{i}" for i in range(CLASSES)], "mean": [0.5] * 3, "std": [0.25] * 3}
    save_checkpoint(path, prefixed("model", model.state_dict()), state)
    return path


def _adi(**changes):
    return SynthesisSettings(**{"n": 12, "mode": "adi", "batch_size": 4, "steps": 2, "size": 8, "student_arch": "resnet8",
                                "student_steps": 3, "student_lr": 0.1, **changes})


def test_adi_end_to_end_and_a_resumed_run_equals_an_uninterrupted_one(tmp_path, teacher_file, monkeypatch):
    settings = _adi()
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    synthesize(teacher_file, whole, settings, progress=False)
    markers = sorted(p.name for p in (whole / "done").iterdir())
    assert markers == ["b0", "b1", "b2"]
    assert [(whole / "done" / m).stat().st_size == 0 for m in markers] == [True, True, False]  # only the newest holds the student
    final, state = load_checkpoint(whole / "done" / "b2")
    assert state["batch"] == 2 and state["model"] == "resnet8" and any(k.startswith("optim.") for k in final)
    torch.manual_seed(settings.seed)
    fresh = create_model("resnet8", num_classes=CLASSES).state_dict()
    assert not torch.equal(final["model.fc.weight"], fresh["fc.weight"])  # the student learned
    student, _ = load_model(whole / "done" / "b2")  # the last marker is a loadable student
    assert torch.equal(student.state_dict()["fc.weight"], final["model.fc.weight"])

    calls, original = [], module.synthesize_batch

    def stop_at_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "synthesize_batch", stop_at_third_batch)
    with pytest.raises(KeyboardInterrupt):
        synthesize(teacher_file, parts, settings, progress=False)
    assert sorted(p.name for p in (parts / "done").iterdir()) == ["b0", "b1"]
    calls.clear()
    monkeypatch.setattr(module, "synthesize_batch", lambda *a, **k: calls.append(1) or original(*a, **k))
    synthesize(teacher_file, parts, settings, progress=False)
    assert len(calls) == 1  # only batch 2 was made again

    images = sorted(p.relative_to(whole) for p in (whole / "train").rglob("*.png"))
    assert len(images) == 12 and images == sorted(p.relative_to(parts) for p in (parts / "train").rglob("*.png"))
    assert all((whole / p).read_bytes() == (parts / p).read_bytes() for p in images)
    resumed, _ = load_checkpoint(parts / "done" / "b2")
    assert resumed.keys() == final.keys() and all(torch.equal(resumed[k], final[k]) for k in final)


def test_adi_settings_are_recorded_and_other_settings_refused(tmp_path, teacher_file):
    out = tmp_path / "adi"
    synthesize(teacher_file, out, _adi(n=4, student_steps=1), progress=False)
    assert '"competition_weight": 10.0' in (out / "synthesize.json").read_text()
    with pytest.raises(DistillscopeError, match=r"other settings \(competition_weight\)"):
        synthesize(teacher_file, out, _adi(n=4, student_steps=1, competition_weight=1.0), progress=False)
    with pytest.raises(DistillscopeError, match=r"other settings \(mode, student_arch, .*\)"):
        synthesize(teacher_file, out, SynthesisSettings(n=4, batch_size=4, steps=2, size=8), progress=False)
    assert "student_arch" not in SynthesisSettings(n=4).record()  # folders of the other modes keep their records


def test_adi_refusals_and_cli(tmp_path, teacher_file, capsys):
    with pytest.raises(DistillscopeError, match="give the student"):
        synthesize(teacher_file, tmp_path / "a", SynthesisSettings(n=4, mode="adi"), progress=False)
    with pytest.raises(DistillscopeError, match="only apply to --mode adi"):
        synthesize(teacher_file, tmp_path / "b", SynthesisSettings(n=4, student_arch="resnet8", competition_weight=1.0), progress=False)
    other = tmp_path / "other.safetensors"
    save_checkpoint(other, prefixed("model", create_model("resnet8", num_classes=3).state_dict()), {"model": "resnet8", "num_classes": 3})
    with pytest.raises(DistillscopeError, match="3 classes and the teacher 4"):
        synthesize(teacher_file, tmp_path / "c", _adi(student_arch=None, student=str(other)), progress=False)
    trained = tmp_path / "trained.safetensors"  # a trained student run: its weights are where the student starts
    torch.manual_seed(5)
    weights = create_model("resnet8", num_classes=CLASSES).state_dict()
    save_checkpoint(trained, prefixed("model", weights), {"model": "resnet8", "num_classes": CLASSES})
    synthesize(teacher_file, tmp_path / "e", _adi(n=4, student_arch=None, student=str(trained), student_steps=0), progress=False)
    kept, _ = load_checkpoint(tmp_path / "e" / "done" / "b0")
    assert torch.equal(kept["model.fc.weight"], weights["fc.weight"])  # 0 KD steps: the run's weights, unchanged
    args = ["synthesize", str(teacher_file), "--n", "4", "--batch-size", "4", "--steps", "1", "--size", "8", "--device", "cpu",
            "--mode", "adi", "--student-arch", "resnet8", "--student-steps", "1", "--competition-weight", "5"]
    assert main(args + ["--out", str(tmp_path / "cli")]) == 0
    assert "folder:" in capsys.readouterr().out
    assert (tmp_path / "cli" / "grid.png").is_file() and (tmp_path / "cli" / "done" / "b0").stat().st_size > 0
    assert main(args[:-8] + ["--student-arch", "resnet8", "--out", str(tmp_path / "d")]) != 0
    assert "only apply to --mode adi" in capsys.readouterr().err
