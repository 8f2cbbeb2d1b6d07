"""FSS / RS / partial RS against the dcor package and hand-written formulas; pooling; the runner's wiring."""
import math

import dcor
import numpy as np
import pytest
import torch
from torch import nn

from distillscope.analysis.cam import GradCAM, softmax_target
from distillscope.analysis.embeddings import LabelEmbeddings
from distillscope.analysis.scores import STATISTICS, batch_statistics, feature_scores, pool
from distillscope.errors import DistillscopeError


def ratio(t):
    return t[0] / math.sqrt(t[1] * t[2])


def batch(seed=0, n=10):
    gen = np.random.default_rng(seed)
    s = gen.normal(size=(n, 6))
    r = s @ gen.normal(size=(6, 4)) + 0.5 * gen.normal(size=(n, 4))
    g = np.eye(3)[np.arange(n) % 3] + 0.1 * gen.normal(size=(n, 3))
    return s, r, g


def test_unbiased_statistics_match_dcor_package():
    s, r, g = batch()
    got = {k: ratio(v) for k, v in batch_statistics(*(torch.tensor(v) for v in (s, r, g)), "unbiased").items()}
    a, b, c = (dcor.u_centered(dcor.distances.pairwise_distances(v)) for v in (s, r, g))
    corr = lambda p, q: dcor.u_product(p, q) / np.sqrt(dcor.u_product(p, p) * dcor.u_product(q, q))  # noqa: E731
    assert got["fss"] == pytest.approx(dcor.u_distance_correlation_sqr(s, r), abs=1e-9)
    assert got["rs_student"] == pytest.approx(dcor.u_distance_correlation_sqr(s, g), abs=1e-9)
    assert got["rs_reference"] == pytest.approx(dcor.u_distance_correlation_sqr(r, g), abs=1e-9)
    assert got["rs_student_given_reference"] == pytest.approx(corr(dcor.u_complementary_projection(b)(a), c), abs=1e-9)
    assert got["rs_reference_given_student"] == pytest.approx(corr(dcor.u_complementary_projection(a)(b), c), abs=1e-9)


def test_biased_statistics_match_dcor_package_and_hand_projection():
    s, r, g = batch(1)
    got = {k: ratio(v) for k, v in batch_statistics(*(torch.tensor(v) for v in (s, r, g)), "biased").items()}
    assert got["fss"] == pytest.approx(dcor.distance_correlation_sqr(s, r), abs=1e-9)
    assert got["rs_student"] == pytest.approx(dcor.distance_correlation_sqr(s, g), abs=1e-9)

    def double_centre(v):
        d = np.sqrt(((v[:, None] - v[None]) ** 2).sum(-1))
        return d - d.mean(0, keepdims=True) - d.mean(1, keepdims=True) + d.mean()

    a, b, c = double_centre(s), double_centre(r), double_centre(g)
    p = a - (a * b).mean() / (b * b).mean() * b
    assert got["rs_student_given_reference"] == pytest.approx((p * c).mean() / np.sqrt((p * p).mean() * (c * c).mean()), abs=1e-9)


def test_pool_by_hand():
    terms = [(1.0, 4.0, 1.0), (3.0, 9.0, 4.0), (0.0, 0.0, 1.0)]  # per batch 0.5, 0.5, 0 (zero denominator)
    out = pool(terms)
    assert out["mean"] == pytest.approx(1 / 3) and out["batches"] == 3
    assert out["std"] == pytest.approx(np.std([0.5, 0.5, 0.0], ddof=1))
    assert out["pooled"] == pytest.approx(4.0 / math.sqrt(13.0 * 6.0))
    assert pool([(1.0, 1.0, 4.0)])["std"] is None and pool([])["pooled"] is None


def nets():
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),  # noqa: E731
                                 nn.Flatten(), nn.Linear(4 * 36, 3)).double()
    return make(), make()


def test_runner_wiring_clean_and_own_perturbation():
    student, reference = nets()
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(12, 3, 6, 6, generator=gen, dtype=torch.float64)
    targets = torch.arange(12) % 3
    emb = LabelEmbeddings(torch.randn(3, 5, generator=gen), list("abc"), "test")
    perturb = lambda x, maps: x * (maps[:, None] > 0.5)  # noqa: E731 (a stand-in for ROAD: keep the salient half)
    out = feature_scores(student, {"teacher": reference}, {"l2": "3"}, images, targets, emb, perturb=perturb, batch_size=12, seed=0,
                         progress=False)
    rows = {(r["condition"], r["statistic"]): r for r in out["rows"]}
    assert len(rows) == 2 * len(STATISTICS) and out["estimator"] == "unbiased" and out["batch_size"] == 12

    g = emb.vectors[targets].double().numpy()
    with torch.no_grad():
        fs, fr = student[:4](images).flatten(1).numpy(), reference[:4](images).flatten(1).numpy()
    assert rows["clean", "fss"]["pooled"] == pytest.approx(dcor.u_distance_correlation_sqr(fs, fr), abs=1e-9)
    assert rows["clean", "rs_reference"]["mean"] == pytest.approx(dcor.u_distance_correlation_sqr(fr, g), abs=1e-9)

    assert out["cam"] == "gradcam"  # paper 002 ranks the perturbed pixels by Grad-CAM (Fig. 4, §4.2.2)

    def own(model):  # each model's features on its own perturbed images
        maps = GradCAM(model, ["3"])(images, softmax_target(targets)).maps
        with torch.no_grad():
            return model[:4](perturb(images, maps)).flatten(1).numpy()

    ps, pr = own(student), own(reference)
    assert rows["lerf", "fss"]["mean"] == pytest.approx(dcor.u_distance_correlation_sqr(ps, pr), abs=1e-9)
    assert rows["lerf", "rs_student"]["mean"] == pytest.approx(dcor.u_distance_correlation_sqr(ps, g), abs=1e-9)


def test_self_reference_and_skipped_batches():
    student, other = nets()
    images = torch.randn(10, 3, 6, 6, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    emb = LabelEmbeddings(torch.eye(3), list("abc"), "onehot")
    out = feature_scores(student, {"self": student, "other": other}, ["1"], images, targets, emb, estimator="biased", batch_size=4, seed=3,
                         progress=False)
    both = {(r["reference"], r["statistic"]): r for r in out["rows"]}
    assert len(both) == 2 * len(STATISTICS) and both["self", "rs_student"] == {**both["other", "rs_student"], "reference": "self"}
    assert both["other", "fss"]["mean"] < 1
    rows = {stat: r for (ref, stat), r in both.items() if ref == "self"}
    assert rows["fss"]["mean"] == pytest.approx(1.0) and rows["fss"]["batches"] == 2
    assert rows["rs_student_given_reference"]["pooled"] == pytest.approx(0.0, abs=1e-9)
    assert rows["rs_student"]["pooled"] == pytest.approx(rows["rs_reference"]["pooled"])
    assert out["notes"] == ["batch of 2 images skipped: U-centred distance correlation needs at least 4"]
    with pytest.raises(DistillscopeError, match="valid: unbiased, biased"):
        feature_scores(student, {"self": student}, ["1"], images, targets, emb, estimator="v", progress=False)
