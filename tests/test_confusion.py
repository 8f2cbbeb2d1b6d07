"""Confusion-as-dark-knowledge statistics and the ``distillscope confusion`` command, against hand computations."""
import json

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.metrics import confusion_matrix

from distillscope.analysis.confusion import class_mean_softmax, compare_confusion, hard_confusion
from distillscope.cli import main
from distillscope.config import load_config
from distillscope.data import Loader, load_data
from distillscope.engine import Trainer, collect_logits, load_model
from distillscope.errors import DistillscopeError

DATA = "shapes?n=160&size=16&n_test=40"


def _stochastic(k, seed):
    rng = np.random.default_rng(seed)
    m = rng.random((k, k)) + 3 * np.eye(k)
    return m / m.sum(1, keepdims=True)


def _hand_statistics(m, q):
    """Eqs. 4-5 written out with loops: off-diagonal rows renormalised, rows without mass in either skipped."""
    k = len(m)
    rows, cos, xs, ys = [], [], [], []
    for i in range(k):
        a = [m[i, j] for j in range(k) if j != i]
        b = [q[i, j] for j in range(k) if j != i]
        if sum(a) == 0 or sum(b) == 0:
            continue
        a, b = [v / sum(a) for v in a], [v / sum(b) for v in b]
        rows.append(i)
        cos.append(sum(x * y for x, y in zip(a, b)) / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5))
        xs += a
        ys += b
    jaccard = sum(min(x, y) for x, y in zip(xs, ys)) / sum(max(x, y) for x, y in zip(xs, ys))
    return rows, float(np.mean(cos)), pearsonr(xs, ys)[0], jaccard


def test_statistics_match_a_hand_computation_and_skip_unconfused_classes():
    m, q = _stochastic(6, 0), _stochastic(6, 1)
    q[4] = np.eye(6)[4]  # class 4 never confused by the model: excluded
    stats = compare_confusion(m, q)
    rows, cosine, pearson, jaccard = _hand_statistics(m, q)
    assert rows == [0, 1, 2, 3, 5] and stats["classes_compared"] == 5 and stats["classes"] == 6
    assert stats["cosine"] == pytest.approx(cosine, rel=1e-12)
    assert stats["pearson"] == pytest.approx(pearson, rel=1e-12)
    assert stats["jaccard"] == pytest.approx(jaccard, rel=1e-12)
    assert stats["cosine_per_class"][4] is None


def test_spectra_are_the_eigenvalues_of_the_symmetrised_off_diagonal_matrix():
    m = _stochastic(5, 2)
    off = m * (1 - np.eye(5))
    off /= off.sum(1, keepdims=True)
    expected = np.sort(np.linalg.eigvals((off + off.T) / 2).real)[::-1]
    np.testing.assert_allclose(compare_confusion(m, _stochastic(5, 3))["spectrum_teacher"], expected, atol=1e-12)


def test_identical_structure_scores_one_and_the_diagonal_does_not_matter():
    m = _stochastic(5, 4)
    sharper = m * (1 - np.eye(5)) * 0.1 + np.diag(1 - (m * (1 - np.eye(5))).sum(1) * 0.1)  # same off-diagonal shape, higher accuracy
    stats = compare_confusion(m, sharper)
    assert stats["cosine"] == pytest.approx(1.0) and stats["pearson"] == pytest.approx(1.0) and stats["jaccard"] == pytest.approx(1.0)
    with pytest.raises(DistillscopeError, match="no class has off-diagonal mass"):
        compare_confusion(m, np.eye(5))


def test_m_and_q_from_logits_match_sklearn_and_a_loop():
    gen = torch.Generator().manual_seed(0)
    targets, logits = torch.randint(0, 4, (50,), generator=gen), torch.randn(50, 4, generator=gen)
    q = confusion_matrix(targets.numpy(), logits.argmax(1).numpy(), labels=range(4), normalize="true")
    np.testing.assert_allclose(hard_confusion(logits, targets, 4), q, atol=1e-12)
    p = torch.softmax(logits.double(), 1).numpy()
    m = np.stack([p[targets.numpy() == c].mean(0) for c in range(4)])
    np.testing.assert_allclose(class_mean_softmax(logits, targets, 4), m, atol=1e-12)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    base = ["epochs=1", f"data.spec={DATA}", "data.batch_size=32", "data.num_workers=0", "run.progress=false", "run.threads=1",
            "run.device=cpu"]
    root = tmp_path_factory.mktemp("runs")
    Trainer(load_config(None, base + ["student.name=resnet14"]), root / "teacher").fit()
    Trainer(load_config(None, base + ["student.name=resnet8", "seed=1"]), root / "model").fit()
    return root / "teacher", root / "model"


def test_confusion_command_prints_the_numbers_and_writes_figures(two_runs, tmp_path, capsys):
    teacher, model = two_runs
    out = tmp_path / "fig"
    assert main(["confusion", str(teacher), str(model), "--data", DATA, "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "confusion.json").read_text())
    assert f"soft Jaccard            {saved['jaccard']:.4f}" in printed and f"Pearson (off-diagonal)  {saved['pearson']:.4f}" in printed
    for name in ("confusion_heatmaps.png", "confusion_spectra.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    data = load_data(DATA)  # M independently: the teacher's class-mean softmax on the test split
    net, state = load_model(teacher)
    logits, targets, _ = collect_logits(net, Loader(data.test, 64, tuple(state["mean"]), tuple(state["std"])))
    p = torch.softmax(logits.double(), 1).numpy()
    m = np.stack([p[targets.numpy() == c].mean(0) if (targets == c).any() else np.zeros(10) for c in range(10)])
    np.testing.assert_allclose(np.array(saved["M"]), m, atol=1e-6)

    assert main(["confusion", str(teacher), str(model), "--data", DATA, "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "already exists; choose another --out" in err and err.count("\n") == 1
