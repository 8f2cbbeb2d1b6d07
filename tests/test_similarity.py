"""Similarity statistics against formulas written out here with numpy loops."""
import numpy as np
import pytest
import torch

from distillscope.analysis.features import read_features
from distillscope.analysis.similarity import (
    agreement, cka_matrix, classifier_weights, correlation_difference, gram, kl_to_teacher, layer_grams,
    stage_taps, subsample, tsne_2d, weight_correlation,
)
from distillscope.errors import DistillscopeError
from distillscope.models import create_model


def cka_numpy(x, y):
    """Kornblith et al. (2019): ||YᵀX||²_F / (||XᵀX||_F ||YᵀY||_F) on column-centred features."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def test_agreement_and_kl_by_hand():
    a = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [0.0, 0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0, 0.0], [3.0, 0.0, 1.0], [0.0, 1.0, 4.0], [2.0, 0.0, 1.0]])
    assert agreement(a, b) == pytest.approx(2 / 4)
    for temperature in (1.0, 4.0):
        total = 0.0
        for row_t, row_s in zip(a.tolist(), b.tolist()):
            p = np.exp(np.array(row_t) / temperature) / np.exp(np.array(row_t) / temperature).sum()
            q = np.exp(np.array(row_s) / temperature) / np.exp(np.array(row_s) / temperature).sum()
            total += sum(p[c] * np.log(p[c] / q[c]) for c in range(3))
        assert kl_to_teacher(a, b, temperature) == pytest.approx(total / 4, rel=1e-9)
    assert kl_to_teacher(a, a) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(DistillscopeError, match="differ in shape"):
        agreement(a, b[:3])


def linear_cka(x, y):
    return cka_matrix({"x": gram(x)}, {"y": gram(y)})[0, 0]


def test_cka_matches_numpy_and_its_invariances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 12))
    y = x @ rng.normal(size=(12, 7)) + 0.5 * rng.normal(size=(40, 7))
    assert linear_cka(torch.tensor(x), torch.tensor(y)) == pytest.approx(cka_numpy(x, y), rel=1e-6)
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    assert linear_cka(torch.tensor(x), torch.tensor(x @ q)) == pytest.approx(1.0, abs=1e-6)  # orthogonal transform
    assert linear_cka(torch.tensor(x), torch.tensor(3.7 * x)) == pytest.approx(1.0, abs=1e-6)  # isotropic scaling
    assert linear_cka(torch.tensor(x @ q), torch.tensor(5 * y)) == pytest.approx(cka_numpy(x, y), rel=1e-5)
    # not invariant to anisotropic scaling: the test can fail
    scaled = x * np.r_[10.0, np.ones(11)]
    assert linear_cka(torch.tensor(x), torch.tensor(scaled)) < 0.95
    # image-shaped features are flattened per row
    images = rng.normal(size=(20, 3, 4, 4))
    other = rng.normal(size=(20, 5))
    assert linear_cka(torch.tensor(images), torch.tensor(other)) == pytest.approx(cka_numpy(images.reshape(20, -1), other), rel=1e-5)


def test_cka_matrix_is_every_pair():
    rng = np.random.default_rng(1)
    a = {f"a{i}": torch.tensor(rng.normal(size=(30, 4 + i))) for i in range(3)}
    b = {f"b{i}": torch.tensor(rng.normal(size=(30, 6))) for i in range(2)}
    matrix = cka_matrix({k: gram(v) for k, v in a.items()}, {k: gram(v) for k, v in b.items()})
    assert matrix.shape == (3, 2)
    for i, xa in enumerate(a.values()):
        for j, xb in enumerate(b.values()):
            assert matrix[i, j] == pytest.approx(cka_numpy(xa.numpy(), xb.numpy()), rel=1e-6)


def test_features_and_grams_are_the_same_in_chunks():
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=5).eval()
    images = torch.randn(10, 3, 16, 16)
    taps = stage_taps(model)
    assert list(taps) == ["stage:0", "stage:1", "stage:2", "embedding"]
    whole = {name: f.flatten(1) for name, f in read_features(model, images, taps, batch_size=10).items()}
    chunked = {name: f.flatten(1) for name, f in read_features(model, images, taps, batch_size=3, cpu=True).items()}
    with torch.no_grad():
        pooled = model(images)  # the embedding is the classifier input: fc(embedding) gives the logits
    assert torch.allclose(model.fc(whole["embedding"]), pooled, atol=1e-5)
    for name in taps:
        assert torch.allclose(whole[name], chunked[name], atol=1e-5)
    grams = layer_grams(model, taps, images, batch_size=4)
    x = whole["stage:1"].double().numpy()
    assert np.allclose(grams["stage:1"].numpy(), x @ x.T, rtol=1e-4, atol=1e-4)
    one_tap_per_pass = layer_grams(model, taps, images, batch_size=4, max_bytes=1)  # every tap over budget: its own pass
    assert list(one_tap_per_pass) == list(taps)
    for name in taps:
        assert torch.allclose(one_tap_per_pass[name], grams[name], rtol=1e-5, atol=1e-4)


def test_read_features_restores_the_mode_and_reads_logits():
    model = create_model("resnet8", num_classes=5).train()
    images = torch.randn(6, 3, 16, 16)
    out = read_features(model, images, ["embedding"], batch_size=4, logits=True)
    assert model.training  # eval while reading, train again after
    with torch.no_grad():
        expected = model.eval()(images)
    assert torch.allclose(out["logits"], expected, atol=1e-5)
    assert out["embedding"].shape == (6, model.fc.in_features)


def test_classifier_weight_correlation_and_l1_by_hand():
    model = create_model("resnet8", num_classes=4)
    assert torch.equal(classifier_weights(model), model.fc.weight.detach())
    w = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    corr = weight_correlation(torch.tensor(w))
    for i in range(3):
        for j in range(3):
            assert corr[i, j] == pytest.approx(w[i] @ w[j] / (np.linalg.norm(w[i]) * np.linalg.norm(w[j])))
    other = np.eye(3)
    diff, l1 = correlation_difference(corr, other)
    assert diff[0, 1] == pytest.approx(1 / np.sqrt(2)) and l1 == pytest.approx(2 * (1 / np.sqrt(2)) / 6)
    with pytest.raises(DistillscopeError, match="class counts differ"):
        correlation_difference(corr, np.eye(4))


def test_subsample_is_seeded_and_limits_classes():
    targets = torch.arange(100) % 20
    rows = subsample(targets, 20, seed=3, max_classes=5)
    assert len(rows) == 20 and len(targets[rows].unique()) <= 5 and torch.equal(rows, subsample(targets, 20, seed=3, max_classes=5))
    assert torch.equal(subsample(targets, 500, seed=0), torch.arange(100))


def test_tsne_is_seeded_and_keeps_far_clusters_apart():
    gen = torch.Generator().manual_seed(0)
    features = torch.cat([torch.randn(20, 8, generator=gen), torch.randn(20, 8, generator=gen) + 20])
    first, second = tsne_2d(features, seed=1), tsne_2d(features, seed=1)
    assert first.shape == (40, 2) and np.allclose(first, second)
    distances = np.linalg.norm(first[:, None] - first[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    nearest = distances.argmin(1)
    assert all((i < 20) == (j < 20) for i, j in enumerate(nearest))
