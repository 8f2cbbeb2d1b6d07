"""distillscope synthesize: the BN-statistics term, the folder it writes, resuming by batch."""
import json

import pytest
import torch
from torch import nn

from distillscope.cli import main
from distillscope.config import load_config
from distillscope.data import load_data
from distillscope.engine import Trainer
from distillscope.errors import DistillscopeError
from distillscope.synthesize import BNStatisticsLoss, SynthesisSettings, synthesize, total_variation


def _bn_net(mean, var):
    bn = nn.BatchNorm2d(3).eval()
    bn.running_mean.copy_(mean)
    bn.running_var.copy_(var)
    return nn.Sequential(bn, nn.Flatten())


def test_bn_statistics_loss_is_zero_when_batch_statistics_equal_the_running_ones():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5) * 2 + 1
    flat = x.permute(1, 0, 2, 3).reshape(3, -1)
    mean = flat.mean(1)
    var = ((flat - mean[:, None]) ** 2).mean(1)  # biased, by hand
    net = _bn_net(mean, var)
    with BNStatisticsLoss(net) as bn:
        net(x)
        assert bn.loss.item() == pytest.approx(0.0, abs=1e-5)
        # other running statistics: ‖Δμ‖₂ + ‖Δσ²‖₂, written out
        net[0].running_mean.add_(torch.tensor([3.0, 0.0, 4.0]))
        net[0].running_var.add_(torch.tensor([0.0, 1.0, 0.0]))
        bn.reset()
        net(x)
        assert bn.loss.item() == pytest.approx(5.0 + 1.0, rel=1e-5)


def test_total_variation_on_a_hand_built_image():
    x = torch.tensor([[0.0, 1.0], [3.0, 7.0]]).view(1, 1, 2, 2)
    # horizontal (1, 4), vertical (3, 6), anti-diagonal (3 - 1), diagonal (7 - 0)
    expected = (1 + 16) ** 0.5 + (9 + 36) ** 0.5 + 2 + 7
    assert total_variation(x).item() == pytest.approx(expected)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    tiny = ["epochs=1", "data.spec=shapes?n=160&size=16&n_test=40", "data.val_fraction=0.2", "data.batch_size=32", "data.num_workers=0",
            "student.name=resnet8", "optim.schedule=cosine", "run.progress=false", "run.threads=1", "run.device=cpu", "run.precision=fp32"]
    Trainer(load_config(None, tiny), out).fit()
    return out


def test_two_batches_make_a_folder_dataset_and_a_rerun_skips_finished_batches(tmp_path, teacher_dir, monkeypatch):
    out = tmp_path / "synthetic"
    settings = SynthesisSettings(n=24, batch_size=12, steps=2, size=16)
    synthesize(teacher_dir, out, settings, progress=False)
    data = load_data(f"folder:{out}?size=16", 0.0, 0)
    assert data.num_classes == 10 and len(data.train) == 24 and len(data.test) >= 10
    assert sorted(p.name for p in (out / "train").iterdir()) == data.classes
    assert (out / "grid.png").is_file() and sorted(p.name for p in (out / "done").iterdir()) == ["b0", "b1"]
    from distillscope.data import normalize
    from distillscope.engine import load_model

    teacher, state = load_model(teacher_dir, "cpu")
    with torch.no_grad():
        logits = teacher.eval()(normalize(data.train.images, tuple(state["mean"]), tuple(state["std"])))
    fit = json.loads((out / "teacher_fit.json").read_text())
    assert fit["images"] == 24 and fit["top1"] == pytest.approx(100.0 * (logits.argmax(1) == data.train.targets).float().mean().item())
    assert fit["nll"] == pytest.approx(torch.nn.functional.cross_entropy(logits, data.train.targets).item(), rel=1e-5)

    (out / "done" / "b1").unlink()  # as if interrupted during batch 2
    calls = []
    import distillscope.synthesize as module

    original = module.synthesize_batch
    monkeypatch.setattr(module, "synthesize_batch", lambda *a, **k: calls.append(1) or original(*a, **k))
    before = (out / "train" / data.classes[0] / "b00000_0000.png").read_bytes()
    synthesize(teacher_dir, out, settings, progress=False)
    assert len(calls) == 1  # only the unfinished batch
    assert (out / "train" / data.classes[0] / "b00000_0000.png").read_bytes() == before
    with pytest.raises(DistillscopeError, match="other settings"):
        synthesize(teacher_dir, out, SynthesisSettings(n=24, batch_size=12, steps=3, size=16), progress=False)


def test_cli_noise_floor_and_refusals(tmp_path, teacher_dir, capsys):
    assert main(["synthesize", str(teacher_dir), "--n", "10", "--out", str(tmp_path / "noise"), "--mode", "noise", "--size", "16",
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    assert ("folder:" in printed.out and "the teacher's top-1 on the saved images" in printed.out
            and "warning" not in printed.err)  # noise: no class to carry
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    assert main(["synthesize", str(teacher_dir), "--n", "10", "--out", str(tmp_path / "mine"), "--mode", "noise", "--device", "cpu"]) != 0
    assert "not a synthesis folder" in capsys.readouterr().err
    assert main(["synthesize", str(teacher_dir), "--n", "5", "--out", str(tmp_path / "few"), "--device", "cpu"]) != 0


@pytest.mark.parametrize("top1, warned", [(20.0, True), (90.0, False)])
def test_cli_warns_when_the_images_carry_their_class_poorly(tmp_path, teacher_dir, capsys, monkeypatch, top1, warned):
    import distillscope.synthesize as module

    monkeypatch.setattr(module, "teacher_fit", lambda *a, **k: {"images": 10, "top1": top1, "nll": 1.0})
    args = ["synthesize", str(teacher_dir), "--n", "10", "--steps", "1", "--batch-size", "10", "--size", "16", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "dd"), "--mode", "deepdream"]) == 0
    printed = capsys.readouterr()
    assert f"{top1:.1f}% (cross-entropy 1.00)" in printed.out
    assert ("more --steps (now 1)" in printed.err) == warned
