import json

import pytest
import torch

import distillscope.engine.precision as precision
from distillscope.config import load_config
from distillscope.engine import Trainer


def test_auto_is_fp32_without_native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    calls = []
    name, reason = precision.choose_precision("auto", torch.device("cpu"), lambda dtype: calls.append(dtype) or 1.0, "k")
    assert name == "fp32" and "no native bf16" in reason and calls == []


def test_auto_measures_both_once_and_picks_the_faster(monkeypatch, tmp_path):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    monkeypatch.setattr(precision, "_cache_file", lambda: tmp_path / "precision.json")  # not other tests' measurements
    calls = []
    fake = {None: 0.2, torch.bfloat16: 0.1}
    def probe(dtype):
        return calls.append(dtype) or fake[dtype]
    assert precision.choose_precision("auto", torch.device("cpu"), probe, "model-a")[0] == "bf16"
    assert precision.choose_precision("auto", torch.device("cpu"), probe, "model-a")[0] == "bf16"
    assert calls == [None, torch.bfloat16]  # the second call reads the cache
    fake[torch.bfloat16] = 0.5
    name, reason = precision.choose_precision("auto", torch.device("cpu"), probe, "model-b")
    assert name == "fp32" and "bf16 500.0 ms/step" in reason
    assert set(json.loads(precision._cache_file().read_text())) == {"model-a", "model-b"}
    assert precision.choose_precision("bf16", torch.device("cpu"), probe, "x") == ("bf16", "set in the config")


def test_the_run_records_its_precision_and_resume_keeps_it(tmp_path, tiny_overrides, monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    monkeypatch.setattr(precision, "_cache_file", lambda: tmp_path / "precision.json")
    monkeypatch.setattr(precision, "time_models", lambda *models_shape_dtype: 0.1 if models_shape_dtype[-1] is None else 0.3)
    cfg = load_config(None, tiny_overrides + ["run.precision=auto"])
    trainer = Trainer(cfg, tmp_path / "run")
    assert trainer.amp_dtype is None and trainer.precision_name == "fp32"
    trainer._stop.set()
    with pytest.raises(Exception, match="--resume"):
        trainer.fit()
    monkeypatch.setattr(precision, "time_models",
                        lambda *models_shape_dtype: 0.3 if models_shape_dtype[-1] is None else 0.1)  # would now pick bf16
    (tmp_path / "precision.json").unlink()
    summary = Trainer(cfg, tmp_path / "run", resume=True).fit()
    assert summary["precision"] == "fp32" and "measured" in summary["precision_reason"]
    assert summary["machine"] and summary["config"]["run"]["precision"] == "auto"
