"""Information-plane estimators on synthetic data with known (or known-ordered) information; per-epoch checkpoints."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distillscope.analysis.infoplane import FIGURE, ProbeSettings, epoch_checkpoints, estimate_ixf, estimate_iyf, information_plane
from distillscope.cli import main
from distillscope.config import load_config
from distillscope.data import load_data
from distillscope.engine import Trainer, load_checkpoint, load_model
from distillscope.errors import DistillscopeError

FAST = ProbeSettings(epochs=30, patience=3, width=16)


def _noisy_one_hot(labels: np.ndarray, sigma: float, rng) -> np.ndarray:
    return np.eye(4)[labels] + sigma * rng.normal(size=(len(labels), 4))


def _true_information(sigma: float, samples: int = 200_000) -> float:
    """I(Y;F) = log 4 − E[−log p(y|f)] for F = e_Y + σ·N(0, I), Y uniform on 4 classes, by Monte Carlo with the
    exact posterior p(y|f) ∝ exp(f_y / σ²) (the class means share one norm)."""
    rng = np.random.default_rng(123)
    y = rng.integers(0, 4, samples)
    f = _noisy_one_hot(y, sigma, rng) / sigma**2
    log_posterior = f[np.arange(samples), y] - np.log(np.exp(f - f.max(1, keepdims=True)).sum(1)) - f.max(1)
    return float(np.log(4) + log_posterior.mean())


def test_label_information_tracks_the_monte_carlo_truth_and_falls_with_noise():
    rng = np.random.default_rng(0)
    y_fit, y_eval = rng.integers(0, 4, 1000), rng.integers(0, 4, 1000)
    estimates = []
    for sigma in (0.4, 1.0, 2.0):
        result = estimate_iyf(torch.tensor(_noisy_one_hot(y_fit, sigma, rng)), torch.tensor(y_fit),
                              torch.tensor(_noisy_one_hot(y_eval, sigma, rng)), torch.tensor(y_eval), 4, FAST)
        truth = _true_information(sigma)
        assert truth - 0.12 < result["iyf"] < truth + 0.08, (sigma, truth, result)
        p = np.bincount(y_eval, minlength=4) / len(y_eval)
        assert result["h_y"] == pytest.approx(-(p * np.log(p)).sum()) and result["iyf"] == pytest.approx(result["h_y"] - result["ce"])
        estimates.append(result["iyf"])
    assert estimates[0] > estimates[1] > estimates[2]
    independent = estimate_iyf(torch.randn(1000, 4), torch.tensor(y_fit), torch.randn(1000, 4), torch.tensor(y_eval), 4, FAST)
    assert abs(independent["iyf"]) < 0.06


def test_input_information_falls_as_the_map_loses_detail():
    data = load_data("shapes?n=240&size=16&n_test=100")
    x_fit, x_eval = data.train.images.float() / 255, data.test.images.float() / 255
    settings, estimates = ProbeSettings(epochs=25, patience=3, width=8, lr=1e-2), []
    for factor in (1, 2, 4, 8):  # features: the image average-pooled to 16, 8, 4, 2 pixels a side
        result = estimate_ixf(F.avg_pool2d(x_fit, factor), x_fit, F.avg_pool2d(x_eval, factor), x_eval, settings)
        constant = F.binary_cross_entropy(x_fit.mean(0, keepdim=True).clamp(1e-6, 1 - 1e-6).expand_as(x_eval), x_eval,
                                          reduction="sum").item() / len(x_eval)
        assert result["constant_bce"] == pytest.approx(constant, rel=1e-4)
        estimates.append(result["ixf"])
    assert estimates[0] > estimates[1] > estimates[2] > estimates[3] > 0
    noise = estimate_ixf(torch.randn(240, 8), x_fit, torch.randn(100, 8), x_eval, settings)["ixf"]  # independent of X
    assert abs(noise) < 0.05 * estimates[0] and noise < estimates[3]


def test_bad_features_are_refused():
    with pytest.raises(DistillscopeError, match="do not match"):
        estimate_iyf(torch.randn(10, 4), torch.zeros(9), torch.randn(5, 4), torch.zeros(5), 2, FAST)


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("keep") / "run"
    overrides = ["epochs=2", "run.keep_every=1", "data.spec=shapes?n=160&size=16&n_test=40", "data.val_fraction=0.2", "data.batch_size=32",
                 "data.num_workers=0", "student.name=resnet8", "run.progress=false", "run.threads=1", "run.device=cpu"]
    Trainer(load_config(None, overrides), out).fit()
    return out


def test_keep_every_writes_model_checkpoints_that_reload(kept_run):
    assert [e for e, _ in epoch_checkpoints(kept_run)] == [1, 2]
    last, _ = load_checkpoint(kept_run / "last.safetensors")
    for epoch in (1, 2):
        model, state = load_model(kept_run / f"epoch_{epoch}.safetensors")
        assert state["metrics"]["epoch"] == epoch and state["model"] == "resnet8"
    for name, value in model.state_dict().items():  # epoch 2 is the final model
        assert torch.equal(value, last[f"model.{name}"]), name
    with pytest.raises(DistillscopeError, match="keep_every"):
        load_config(None, ["run.keep_every=0"])
    with pytest.raises(DistillscopeError, match="run.keep_every"):
        epoch_checkpoints(kept_run.parent)
    assert [e for e, _ in epoch_checkpoints(kept_run, [2])] == [2]
    with pytest.raises(DistillscopeError, match=r"epoch\(s\) \[3\]; it kept \[1, 2\]"):
        epoch_checkpoints(kept_run, [2, 3])


def test_information_plane_and_cli_over_kept_epochs(kept_run, tmp_path, capsys):
    data = "shapes?n=160&size=16&n_test=40"
    tiny = ProbeSettings(epochs=2, patience=1, width=8)
    result = information_plane([kept_run], data, ["embedding", "stage:0"], n_fit=100, n_eval=40, settings=tiny, progress=False)
    assert [(p["layer"], p["epoch"]) for p in result.points] == [("embedding", 1), ("stage:0", 1), ("embedding", 2), ("stage:0", 2)]
    assert all(np.isfinite(p["ixf"]) and np.isfinite(p["iyf"]) for p in result.points)
    out = tmp_path / "ip"
    args = ["infoplane", str(kept_run), "--data", data, "--layers", "embedding", "--n-fit", "100", "--n-eval", "40", "--epochs", "2",
            "--device", "cpu", "--checkpoints", "2", "--out", str(out)]
    assert main(args) == 0
    assert "I(Y;F)" in capsys.readouterr().out
    assert [p["epoch"] for p in json.loads((out / "infoplane.json").read_text())["points"]] == [2]
    assert (out / FIGURE).stat().st_size > 1000
    assert main(args) == 2  # never overwrites
