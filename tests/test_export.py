"""distillscope export: the deployable student alone (plain and SimKD) as safetensors, ONNX and TorchScript, with its model card."""
from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path

import pytest
import torch

from distillscope.cli import main
from distillscope.config import load_config
from distillscope.engine import Trainer, load_model, save_checkpoint
from distillscope.engine.checkpoint import prefixed
from distillscope.models import create_model

pytestmark = [pytest.mark.filterwarnings("ignore:the teacher's class names differ"),  # the SimKD run's random teacher records none
              pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")]

_RUNS: dict[str, Path] = {}


def _run(kind: str, overrides: list[str], factory) -> Path:
    """A finished tiny run (trained once per test session): a resnet8 CE student, or a SimKD one (student +
    projector + a resnet14 teacher's classifier) distilled from a randomly initialised teacher."""
    if kind not in _RUNS:
        root, extra = factory.mktemp(kind), []
        if kind == "simkd":
            torch.manual_seed(0)
            teacher = root / "teacher.safetensors"
            save_checkpoint(teacher, prefixed("model", create_model("resnet14", num_classes=10).state_dict()),
                            {"model": "resnet14", "num_classes": 10})
            extra = ["method.name=simkd", "teacher.name=resnet14", f"teacher.checkpoint={teacher}", "run.teacher_cache=off"]
        out = root / f"{kind}-s0"
        Trainer(load_config(None, overrides + extra + [f"name=tiny-{kind}"]), out).fit()
        _RUNS[kind] = out
    return _RUNS[kind]


@pytest.fixture(params=["resnet8", "simkd"])
def run(request, tiny_overrides, tmp_path_factory) -> Path:
    return _run(request.param, tiny_overrides, tmp_path_factory)


@pytest.fixture
def resnet8_run(tiny_overrides, tmp_path_factory) -> Path:
    return _run("resnet8", tiny_overrides, tmp_path_factory)


def _export(run: Path, out: Path, *args: str) -> None:
    assert main(["export", str(run), "--out", str(out), *args]) == 0


def _reference(path: Path, images: torch.Tensor) -> torch.Tensor:
    model, _ = load_model(path)
    with torch.no_grad():
        return model.eval()(images)


IMAGES = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))  # a batch size the export never saw


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_onnx_and_torchscript_give_the_pytorch_logits(run, fmt, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnx")
        ort = pytest.importorskip("onnxruntime")
    _export(run, tmp_path / "out", "--format", fmt)
    if fmt == "onnx":
        session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch axis
        got = torch.from_numpy(session.run(None, {"images": IMAGES.numpy()})[0])
    else:
        got = torch.jit.load(str(tmp_path / "out" / "model.pt"))(IMAGES)
    want = _reference(run, IMAGES)  # the run's deployable model in eval mode (SimKD: through projector and teacher classifier)
    assert got.shape == (5, 10)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_safetensors_reloads_into_the_model_exactly(run, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    _export(run, tmp_path / "best")
    _export(run, tmp_path / "last", "--checkpoint", "last")
    for which in ("best", "last"):
        tensors = load_file(tmp_path / which / "model.safetensors")
        reference, state = load_model(run / f"{which}.safetensors")
        model = create_model("resnet8", num_classes=10) if run.name.startswith("resnet8") else load_model(run)[0]
        model.load_state_dict(tensors)  # strict: the same keys, plain (no prefix)
        for key, value in reference.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), (which, key)
        with torch.no_grad():
            assert torch.equal(model.eval()(IMAGES), reference.eval()(IMAGES))
    with safe_open(tmp_path / "best" / "model.safetensors", "pt") as fh:
        assert json.loads(fh.metadata()["model"]) == "resnet8" and json.loads(fh.metadata()["mean"]) == state["mean"]


def test_the_model_card_has_the_accuracy_and_the_command_that_reproduces_it(run, tmp_path):
    _export(run, tmp_path / "out", "--format", "torchscript")
    card, summary = (tmp_path / "out" / "README.md").read_text(), json.loads((run / "summary.json").read_text())
    assert f"| test top-1 at the last epoch | {summary['last']['test/top1']:.2f}% (epoch 2) |" in card
    assert f"| test top-1 at the best-val epoch | {summary['best']['test/top1']:.2f}% (epoch {summary['best']['epoch']}) |" in card
    assert f"| val top-1 at the best-val epoch | {summary['best']['val/top1']:.2f}%" in card
    assert "distillscope train config.yaml --out runs/" in card
    assert (tmp_path / "out" / "config.yaml").read_text() == (run / "config.yaml").read_text()
    assert f"| precision | {summary['precision']} (" in card and f"| machine | {summary['machine']} |" in card
    assert "`shapes?n=160&size=16&n_test=40`: 10 classes" in card and "(batch, 3, 16, 16)" in card
    if summary["method"] == "simkd":
        assert "| teacher | resnet14 (" in card and "| method | simkd: " in card and "projector" in card
    else:
        assert "| teacher | none |" in card and "| method | ce: " in card


def test_the_model_card_gives_mean_and_std_over_sibling_seed_runs(resnet8_run, tmp_path):
    summary = json.loads((resnet8_run / "summary.json").read_text())
    for folder, seed, shift, name in (("kd-s0", 0, 0.0, None), ("kd-s1", 1, 7.0, None), ("kd-s2", 2, -3.0, None),
                                      ("kd-s3", 3, 50.0, "another"), ("kd-x-s4", 4, 50.0, None)):
        shutil.copytree(resnet8_run, tmp_path / "runs" / folder)
        changed = {**summary, "seed": seed, "name": name or summary["name"],
                   "last": {**summary["last"], "test/top1": summary["last"]["test/top1"] + shift}}
        (tmp_path / "runs" / folder / "summary.json").write_text(json.dumps(changed))
    _export(tmp_path / "runs" / "kd-s1", tmp_path / "out")
    values = [summary["last"]["test/top1"] + shift for shift in (0.0, 7.0, -3.0)]  # not kd-s3 (another config) nor kd-x-s4
    expected = f"over seeds 0, 1, 2: {statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}%"
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"| test top-1 at the last epoch | {values[1]:.2f}% (epoch 2); {expected} |" in card


def test_export_refuses_an_existing_out_and_a_missing_onnx(resnet8_run, tmp_path, capsys, monkeypatch):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["export", str(resnet8_run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "never overwrites" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the [export] extra were not installed
    assert main(["export", str(resnet8_run), "--format", "onnx", "--out", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'distillscope[export]'" in err
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new*"))
