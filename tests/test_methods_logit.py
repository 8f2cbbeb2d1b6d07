"""Logit-based methods (KD+LS, DKD, DIST, MLKD) and SFKD masks against formulas written out here.

Every reference below is an independent numpy computation with explicit loops; none calls the
implementation's helpers.
"""
import math

import numpy as np
import pytest
import torch

from distillscope.config import load_config
from distillscope.data import Batch
from distillscope.errors import DistillscopeError
from distillscope.methods import Outputs, TrainingInfo, create_method
from distillscope.methods.kd import kd_loss, standardise
import json

from distillscope.engine import Trainer
from distillscope.methods.sfkd import (kept_count, mask_attention, mask_entries, parse_mask, softened_entropy, softening_temperature,
                                       teacher_entropy_sums)


def softmax(row):
    row = np.asarray(row, dtype=np.float64)
    e = np.exp(row - row[np.isfinite(row)].max())
    return e / e.sum()


def kl(p, q):
    """Σ p log(p / q) over the entries where p > 0."""
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def zscore(row):
    row = np.asarray(row, dtype=np.float64)
    out = row.copy()
    finite = np.isfinite(row)
    kept = row[finite]
    out[finite] = (kept - kept.mean()) / (kept.std(ddof=1) + 1e-7)
    return out


def logits_pair(b=5, c=7, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=gen) * scale, torch.randn(b, c, generator=gen) * scale


def batch(targets):
    n = len(targets)
    return Batch(torch.zeros(n, 3, 4, 4), torch.as_tensor(targets), torch.arange(n))


def numpy_kd(s, t, T):
    return T * T * np.mean([kl(softmax(t[i] / T), softmax(s[i] / T)) for i in range(len(s))])


# ----------------------------------------------------------------- KD and logit standardisation
def test_kd_with_masked_teacher_classes_is_the_kl_over_the_kept_classes_and_has_finite_gradients():
    s, t = logits_pair()
    t[:, [1, 4]] = float("-inf")
    s.requires_grad_(True)
    T = 2.0
    loss = kd_loss(s, t, T)
    expected = numpy_kd(s.detach().double().numpy(), t.double().numpy(), T)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    # d/ds of T²·mean KL = T·(softmax(s/T) − softmax(t/T)) / B, written out per sample
    grad = np.stack([T * (softmax(s[i].detach().numpy() / T) - softmax(t[i].numpy() / T)) / len(s) for i in range(len(s))])
    np.testing.assert_allclose(s.grad.numpy(), grad, rtol=1e-4, atol=1e-7)


def test_standardise_is_the_per_sample_z_score_with_unbiased_std_and_keeps_minus_inf():
    s, _ = logits_pair(4, 6)
    s[1, [0, 3]] = float("-inf")
    out = standardise(s).numpy()
    for i in range(4):
        np.testing.assert_allclose(out[i], zscore(s[i].numpy()), rtol=1e-5, atol=1e-6)
    assert np.isneginf(out[1, [0, 3]]).all()


def test_kd_with_logit_standardization_distils_z_scored_logits():
    s, t = logits_pair()
    b = batch([0, 1, 2, 3, 4])
    losses = create_method("kd", T=2.0, kd_weight=9.0, ce_weight=1.0, logit_standardization=True)(Outputs(s), Outputs(t), b, 0)
    zs = np.stack([zscore(r) for r in s.numpy()])
    zt = np.stack([zscore(r) for r in t.numpy()])
    assert losses["kd"].item() == pytest.approx(9.0 * numpy_kd(zs, zt, 2.0), rel=1e-5)
    # standardised logits are invariant to shifting and scaling each teacher row
    shifted = create_method("kd", T=2.0, logit_standardization=True)(Outputs(s), Outputs(t * 3.0 + 5.0), b, 0)
    plain = create_method("kd", T=2.0, logit_standardization=True)(Outputs(s), Outputs(t), b, 0)
    assert shifted["kd"].item() == pytest.approx(plain["kd"].item(), rel=1e-5)


# ----------------------------------------------------------------- DKD
def numpy_dkd(s, t, y, T):
    """(TCKD, NCKD) batch means × T², from the paper's definitions."""
    tckd, nckd = [], []
    for i in range(len(s)):
        p_s, p_t = softmax(s[i] / T), softmax(t[i] / T)
        b_s, b_t = [p_s[y[i]], 1 - p_s[y[i]]], [p_t[y[i]], 1 - p_t[y[i]]]
        tckd.append(kl(b_t, b_s))
        others = [j for j in range(len(p_s)) if j != y[i]]
        q_s = [p_s[j] / sum(p_s[others]) for j in others]
        mass = sum(p_t[others])
        q_t = [p_t[j] / mass if mass > 0 else 0.0 for j in others]
        nckd.append(kl(q_t, q_s))
    return T * T * np.mean(tckd), T * T * np.mean(nckd)


@pytest.mark.parametrize("epoch, ramp", [(0, 0.25), (1, 0.5), (3, 1.0), (10, 1.0)])
def test_dkd_matches_the_decoupled_terms_and_ramps_in_over_the_warm_up(epoch, ramp):
    s, t = logits_pair()
    y = [0, 3, 6, 2, 2]
    losses = create_method("dkd", alpha=1.5, beta=8.0, T=4.0, warmup_epochs=4)(Outputs(s), Outputs(t), batch(y), epoch)
    tckd, nckd = numpy_dkd(s.double().numpy(), t.double().numpy(), y, 4.0)
    assert set(losses) == {"ce", "tckd", "nckd"}
    assert losses["tckd"].item() == pytest.approx(ramp * 1.5 * tckd, rel=1e-4)
    assert losses["nckd"].item() == pytest.approx(ramp * 8.0 * nckd, rel=1e-4)


def test_dkd_terms_recompose_classical_kd_per_sample():
    """The paper's Eq.: KL(p_t ‖ p_s) = TCKD + (1 − p_t[target]) · NCKD, sample by sample."""
    s, t = logits_pair(1, 6, seed=3)
    method = create_method("dkd", alpha=1.0, beta=1.0, T=1.0, warmup_epochs=0)
    losses = method(Outputs(s), Outputs(t), batch([2]), 0)
    p_t = softmax(t[0].double().numpy())
    recomposed = losses["tckd"].item() + (1 - p_t[2]) * losses["nckd"].item()
    assert recomposed == pytest.approx(kl(p_t, softmax(s[0].double().numpy())), rel=1e-5)


def test_dkd_stays_finite_when_a_mask_removes_the_target_or_every_other_class():
    s, t = logits_pair(2, 5)
    t[0, 1] = float("-inf")  # target of sample 0 removed
    t[1, [0, 1, 3, 4]] = float("-inf")  # only the target of sample 1 kept
    s.requires_grad_(True)
    y = [1, 2]
    losses = create_method("dkd", warmup_epochs=0)(Outputs(s), Outputs(t), batch(y), 0)
    tckd, nckd = numpy_dkd(s.detach().double().numpy(), t.double().numpy(), y, 4.0)
    assert losses["tckd"].item() == pytest.approx(1.0 * tckd, rel=1e-4)
    assert losses["nckd"].item() == pytest.approx(8.0 * nckd, rel=1e-4)
    sum(losses.values()).backward()
    assert torch.isfinite(s.grad).all()


# ----------------------------------------------------------------- DIST
def test_dist_matches_pearson_relations_over_samples_and_over_classes():
    s, t = logits_pair(6, 5)
    T = 4.0
    losses = create_method("dist", beta=2.0, gamma=3.0, T=T)(Outputs(s), Outputs(t), batch([0] * 6), 0)
    y_s = np.stack([softmax(r) for r in s.double().numpy() / T])
    y_t = np.stack([softmax(r) for r in t.double().numpy() / T])
    inter = 1 - np.mean([np.corrcoef(y_s[i], y_t[i])[0, 1] for i in range(6)])
    intra = 1 - np.mean([np.corrcoef(y_s[:, j], y_t[:, j])[0, 1] for j in range(5)])
    assert losses["inter"].item() == pytest.approx(2.0 * T * T * inter, rel=1e-4)
    assert losses["intra"].item() == pytest.approx(3.0 * T * T * intra, rel=1e-4)
    same = create_method("dist")(Outputs(t), Outputs(t), batch([0] * 6), 0)
    assert same["inter"].item() == pytest.approx(0.0, abs=1e-5) and same["intra"].item() == pytest.approx(0.0, abs=1e-5)


# ----------------------------------------------------------------- MLKD
def test_mlkd_sums_instance_batch_and_class_alignment_over_temperatures():
    s, t = logits_pair(4, 6)
    temps = [1.0, 3.0]
    losses = create_method("mlkd", temperatures=temps, kd_weight=0.5)(Outputs(s), Outputs(t), batch([0, 1, 2, 3]), 0)
    s_np, t_np = s.double().numpy(), t.double().numpy()
    inst = bat = cls = 0.0
    for T in temps:
        p_s = np.stack([softmax(r / T) for r in s_np])
        p_t = np.stack([softmax(r / T) for r in t_np])
        inst += numpy_kd(s_np, t_np, T)
        b, c = p_s.shape
        bat += sum((sum(p_s[i, k] * p_s[j, k] - p_t[i, k] * p_t[j, k] for k in range(c))) ** 2 for i in range(b) for j in range(b)) / b
        cls += sum((sum(p_s[k, i] * p_s[k, j] - p_t[k, i] * p_t[k, j] for k in range(b))) ** 2 for i in range(c) for j in range(c)) / c
    assert losses["instance"].item() == pytest.approx(0.5 * inst, rel=1e-5)
    assert losses["batch"].item() == pytest.approx(0.5 * bat, rel=1e-4)
    assert losses["class"].item() == pytest.approx(0.5 * cls, rel=1e-4)


def test_mlkd_logit_standardization_applies_to_the_instance_term():
    s, t = logits_pair(4, 6)
    b = batch([0, 1, 2, 3])
    plain = create_method("mlkd", temperatures=[2.0])(Outputs(s), Outputs(t), b, 0)
    ls = create_method("mlkd", temperatures=[2.0], logit_standardization=True)(Outputs(s), Outputs(t), b, 0)
    zs = np.stack([zscore(r) for r in s.numpy()])
    zt = np.stack([zscore(r) for r in t.numpy()])
    assert ls["instance"].item() == pytest.approx(0.9 * numpy_kd(zs, zt, 2.0), rel=1e-5)
    assert ls["batch"].item() == pytest.approx(plain["batch"].item()) and ls["class"].item() == pytest.approx(plain["class"].item())


def test_mlkd_level_weights_scale_only_their_level():
    s, t = logits_pair(4, 6)
    b = batch([0, 1, 2, 3])
    plain = create_method("mlkd", temperatures=[2.0, 4.0])(Outputs(s), Outputs(t), b, 0)
    weighted = create_method("mlkd", temperatures=[2.0, 4.0], level_weights={"class": 0.01, "batch": 0.0})(Outputs(s), Outputs(t), b, 0)
    assert weighted["class"].item() == pytest.approx(0.01 * plain["class"].item(), rel=1e-6)
    assert weighted["batch"].item() == 0.0 and weighted["instance"].item() == pytest.approx(plain["instance"].item())


@pytest.mark.parametrize("bad", [{"klass": 0.1}, {"class": -1.0}, {"class": "0.1"}, [0.1]])
def test_mlkd_rejects_bad_level_weights(bad):
    with pytest.raises(DistillscopeError, match="level_weights=.*non-negative numbers"):
        create_method("mlkd", level_weights=bad)


@pytest.mark.parametrize("bad", [[], [2.0, -1.0], "4", [True]])
def test_mlkd_rejects_bad_temperatures(bad):
    with pytest.raises(DistillscopeError, match="temperatures=.*non-empty list of positive numbers"):
        create_method("mlkd", temperatures=bad)


# ----------------------------------------------------------------- SFKD masks
@pytest.mark.parametrize("fraction, n, kept", [(0.7, 10, 7), (0.55, 10, 6), (0.5, 100, 50), (1.0, 13, 13), (0.01, 10, 1), (0.3, 3, 1)])
def test_kept_count_is_ceil_of_k_times_n(fraction, n, kept):
    assert kept_count(fraction, n) == kept


def test_logit_masks_by_value_and_magnitude_with_zero_and_minus_inf_fill():
    z = torch.tensor([[3.0, -1.0, 2.0, 0.5, -4.0], [0.0, 1.0, -2.0, 5.0, 4.0]])
    inf = float("-inf")
    assert mask_entries(z, 0.6).tolist() == [[3.0, 0.0, 2.0, 0.5, 0.0], [0.0, 1.0, 0.0, 5.0, 4.0]]
    assert mask_entries(z, 0.6, fill=inf).tolist() == [[3.0, inf, 2.0, 0.5, inf], [inf, 1.0, inf, 5.0, 4.0]]
    assert mask_entries(z, 0.6, rank="magnitude").tolist() == [[3.0, 0.0, 2.0, 0.0, -4.0], [0.0, 0.0, -2.0, 5.0, 4.0]]
    assert torch.equal(mask_entries(z, 1.0), z) and torch.equal(mask_entries(z, 1.0, fill=inf), z)
    ties = torch.tensor([[2.0, 1.0, 2.0, 2.0, 0.5, -1.0]])
    assert mask_entries(ties, 0.3, fill=inf).tolist() == [[2.0, inf, 2.0, 2.0, inf, inf]]  # ceil(1.8) = 2 kept, plus the tie


def test_masks_keep_the_memory_layout_of_channels_last_maps():
    x = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    for out in (mask_entries(x, 0.3), mask_attention(x, 0.3), mask_entries(x, 1.0)):
        assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(mask_entries(x, 0.3), mask_entries(x.contiguous(), 0.3))


def test_feature_mask_keeps_the_top_k_of_each_flattened_map_and_passes_gradients_only_there():
    x = torch.tensor([[[[1.0, 5.0], [3.0, 0.0]], [[2.0, 7.0], [4.0, 6.0]]]])  # (1, 2, 2, 2)
    x = torch.cat([x, -x]).requires_grad_(True)  # second sample: all values negated
    out = mask_entries(x, 0.5)
    assert out[0].flatten().tolist() == [0.0, 5.0, 0.0, 0.0, 0.0, 7.0, 4.0, 6.0]
    assert out[1].flatten().tolist() == [-1.0, 0.0, -3.0, 0.0, -2.0, 0.0, 0.0, 0.0]  # the largest values of -x
    out.sum().backward()
    assert x.grad[0].flatten().tolist() == [0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert x.grad[1].flatten().tolist() == [1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_attention_mask_keeps_the_top_k_positions_of_sum_of_squares_over_channels():
    a = torch.tensor([[[[1.0, -3.0, 0.5], [2.0, 0.0, 1.0]], [[1.0, 0.0, 0.5], [-2.0, 2.5, 0.0]]]])  # (1, 2, 2, 3)
    # energy per position Σ_c a_c²: [[2, 9, 0.5], [8, 6.25, 1]] -> top 3 of 6 positions: 9, 8, 6.25
    out = mask_attention(a, 0.5)
    keep = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    assert torch.equal(out, a * keep)
    phi = lambda m: m.pow(2).sum(1)  # noqa: E731
    assert torch.equal(phi(out), phi(a) * keep)
    assert torch.equal(mask_attention(a, 1.0), a)


def test_mask_on_a_method_masks_the_teacher_before_its_losses_and_leaves_the_input_untouched():
    s, t = logits_pair(3, 10)
    original = t.clone()
    b = batch([0, 1, 2])
    for fill, expected_fill in ((0, 0.0), ("-inf", -np.inf)):
        losses = create_method("kd", T=4.0, kd_weight=1.0, mask={"logits": 0.3, "logits_fill": fill})(Outputs(s), Outputs(t), b, 0)
        masked = t.double().numpy().copy()
        for i in range(3):
            drop = np.argsort(-masked[i])[3:]  # keep the 3 largest of 10
            masked[i, drop] = expected_fill
        assert losses["kd"].item() == pytest.approx(numpy_kd(s.double().numpy(), masked, 4.0), rel=1e-5)
    assert torch.equal(t, original)
    unmasked = create_method("kd")(Outputs(s), Outputs(t), b, 0)
    exact = create_method("kd", mask={"logits": 1.0, "logits_fill": "-inf"})(Outputs(s), Outputs(t), b, 0)
    assert all(torch.equal(unmasked[k], exact[k]) for k in unmasked)


def test_feature_masks_reach_feature_methods_and_need_teacher_features():
    gen = torch.Generator().manual_seed(0)
    s_feat, t_feat = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, generator=gen)
    method = create_method("fitnet", mask={"features": 0.25})
    method.build({"hint": s_feat.shape}, {"hint": t_feat.shape}, TrainingInfo(10, torch.arange(4), torch.arange(4), 1, 1))
    method.eval()
    losses = method(Outputs(torch.randn(2, 10), {"hint": s_feat}), Outputs(torch.randn(2, 10), {"hint": t_feat}), batch([0, 1]), 0)
    kept = t_feat.flatten(1).clone()
    for row in kept:
        row[np.argsort(-row.numpy(), kind="stable")[12:]] = 0.0  # 25 % of 48 entries = 12 kept
    guided = method.regressor(s_feat)
    expected = 100.0 * ((guided - kept.view_as(t_feat)) ** 2).mean()
    assert losses["hint"].item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(DistillscopeError, match="mask.features: this method taps no teacher features"):
        create_method("kd", mask={"features": 0.5})(Outputs(torch.randn(2, 10)), Outputs(torch.randn(2, 10)), batch([0, 1]), 0)
    with pytest.raises(DistillscopeError, match="mask.attention: this method taps no 4-D"):
        create_method("kd", mask={"attention": 0.5})(Outputs(torch.randn(2, 10)), Outputs(torch.randn(2, 10), {"e": torch.randn(2, 8)}),
                                                     batch([0, 1]), 0)


@pytest.mark.parametrize(
    "mask, message",
    [
        ({"logit": 0.5}, "unknown key.*logit; valid: logits, features, attention, rank, logits_fill"),
        ({"logits": 0}, r"logits=0: the kept fraction K must be a number in \(0, 1\]"),
        ({"features": 1.5}, "features=1.5: the kept fraction"),
        ({"attention": True}, "attention=True: the kept fraction"),
        ({"logits": "0.5"}, "logits='0.5': the kept fraction"),
        ({"rank": "value"}, "give a kept fraction for at least one of logits, features, attention"),
        ({"logits": 0.5, "rank": "abs"}, "rank='abs': choose value or magnitude"),
        ({"logits": 0.5, "logits_fill": 1}, "logits_fill=1: choose 0"),
        ([0.5], "expected a mapping"),
    ],
)
def test_bad_masks_give_one_line(mask, message):
    with pytest.raises(DistillscopeError, match=message):
        parse_mask(mask)


def test_masks_come_from_yaml_overrides_and_are_refused_without_a_teacher():
    cfg = load_config(None, ["method.name=kd", "teacher.name=resnet8", "teacher.checkpoint=x", "method.mask.logits=0.7",
                             "method.mask.logits_fill=-inf"])
    assert cfg.method["mask"] == {"logits": 0.7, "logits_fill": "-inf"}
    method = create_method("kd", **{k: v for k, v in cfg.method.items() if k != "name"})
    assert (method.mask.logits, method.mask.logits_fill, method.mask.rank) == (0.7, -math.inf, "value")
    with pytest.raises(DistillscopeError, match="uses no teacher, so there is nothing to mask"):
        create_method("ce", mask={"logits": 0.5})


# ----------------------------------------------------------------- SFKD: softened teacher entropy before / after the logit mask
def numpy_entropy(row, T):
    """-Σ p log p (nats) of softmax(row / T) in float64, written out; a class with p = 0 (logit -inf) adds nothing."""
    z = np.asarray(row, dtype=np.float64) / T
    top = max(v for v in z if np.isfinite(v))
    e = [math.exp(v - top) if np.isfinite(v) else 0.0 for v in z]
    p = [v / sum(e) for v in e]
    return -sum(pi * math.log(pi) for pi in p if pi > 0)


def numpy_top_k(row, kept, fill):
    out = np.asarray(row, dtype=np.float64).copy()
    out[np.argsort(-out)[kept:]] = fill
    return out


inf_ = float("inf")


def test_softened_entropy_is_minus_sum_p_log_p_and_minus_inf_classes_add_nothing():
    z = torch.tensor([[3.0, -1.0, 2.0, 0.5, -4.0], [0.0, 0.0, 0.0, 0.0, 0.0], [8.0, -inf_, 1.0, -inf_, -2.0], [-30.0, 40.0, 1.0, 2.0, 3.0]])
    for T in (1.0, 4.0, 0.5):
        got = softened_entropy(z, T)
        assert got.dtype == torch.float32 and torch.isfinite(got).all()
        assert got.tolist() == pytest.approx([numpy_entropy(row, T) for row in z.tolist()], rel=1e-5, abs=1e-6)
    assert softened_entropy(z)[1].item() == pytest.approx(math.log(5), rel=1e-6)  # uniform over 5 classes
    assert softened_entropy(torch.tensor([[1.0, -inf_, -inf_]]), 4.0).item() == 0.0  # one class left: no uncertainty
    half = torch.tensor([[2.0, 2.0, -inf_, -inf_]], dtype=torch.float16)  # cached teacher logits may be fp16
    assert softened_entropy(half, 3.0).item() == pytest.approx(math.log(2), rel=1e-6)


def test_teacher_entropy_sums_mask_each_teacher_and_average_over_teachers():
    t1, t2 = logits_pair(4, 10, seed=3)
    for fill, numpy_fill in ((0, 0.0), ("-inf", -np.inf)):
        mask = parse_mask({"logits": 0.3, "logits_fill": fill})
        for teacher, rows in ((Outputs(t1), [t1]), ([Outputs(t1), Outputs(t2)], [t1, t2])):
            sums = teacher_entropy_sums(teacher, mask, 4.0)
            before = np.mean([sum(numpy_entropy(r, 4.0) for r in t.tolist()) for t in rows])
            after = np.mean([sum(numpy_entropy(numpy_top_k(r, 3, numpy_fill), 4.0) for r in t.tolist()) for t in rows])
            assert sums.shape == (2,) and sums.tolist() == pytest.approx([before, after], rel=1e-5)
    exact = teacher_entropy_sums(Outputs(t1), parse_mask({"logits": 1.0}), 2.0)
    assert exact[0].item() == exact[1].item()


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_proposition_1_direction_fill_zero_raises_the_entropy_of_negative_dropped_logits_and_minus_inf_lowers_it(T):
    z = torch.tensor([[6.0, 3.0, 1.0, -2.0, -3.0, -5.0, -6.0, -8.0, -9.0, -12.0],
                      [2.0, 1.5, 0.5, -0.5, -1.0, -1.0, -2.0, -3.0, -3.5, -4.0]])
    zero, minus_inf = parse_mask({"logits": 0.3}), parse_mask({"logits": 0.3, "logits_fill": "-inf"})
    before = softened_entropy(z, T)
    raised, lowered = softened_entropy(zero.mask_logits(z), T), softened_entropy(minus_inf.mask_logits(z), T)
    assert (raised > before).all() and (lowered < before).all()  # the 7 dropped logits are all negative: 0 lifts them
    for i, row in enumerate(z.tolist()):
        assert raised[i].item() == pytest.approx(numpy_entropy(numpy_top_k(row, 3, 0.0), T), rel=1e-5)
        assert lowered[i].item() == pytest.approx(numpy_entropy(numpy_top_k(row, 3, -np.inf), T), rel=1e-5)


def test_softening_temperature_follows_each_methods_own_name_for_it():
    assert softening_temperature(create_method("kd", T=3.0)) == (3.0, None)
    assert softening_temperature(create_method("dkd"))[0] == create_method("dkd").T
    assert softening_temperature(create_method("mtkd", T=2.0)) == (2.0, None)
    assert softening_temperature(create_method("mlkd", temperatures=[5, 5])) == (5.0, None)
    T, note = softening_temperature(create_method("mlkd", temperatures=[2, 3]))
    assert T == 1.0 and "several temperatures (2, 3)" in note
    T, note = softening_temperature(create_method("fitnet"))
    assert T == 1.0 and "no temperature" in note
    assert "z-scored" in softening_temperature(create_method("kd", logit_standardization=True))[1]


TINY = [
    "epochs=2", "data.spec=shapes?n=160&size=16&n_test=40", "data.val_fraction=0.2", "data.batch_size=32",
    "data.num_workers=0", "student.name=resnet8", "optim.lr=0.05", "optim.schedule=cosine",
    "run.progress=false", "run.threads=1", "run.device=cpu", "run.precision=fp32",
]


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("sfkd-teacher") / "run"
    Trainer(load_config(None, TINY + ["epochs=1", "method={name: ce}"]), out).fit()
    return out


def rows_of(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_masked_run_records_the_teacher_entropy_per_epoch_and_in_its_summary_and_an_unmasked_run_does_not(tiny_teacher, tmp_path, capsys,
                                                                                                           interrupt_at):
    teacher = ["method.name=kd", "method.T=4", "teacher.name=resnet8", f"teacher.checkpoint={tiny_teacher}"]
    masked = load_config(None, TINY + teacher + ["method.mask.logits=0.5", "method.mask.logits_fill=-inf", "run.teacher_cache=off"])
    trainer = Trainer(masked, tmp_path / "masked")
    interrupt_at(trainer, 5)  # mid-epoch 2: the entropy sums so far are checkpointed with the others
    summary = Trainer(masked, tmp_path / "masked", resume=True).fit()
    rows = rows_of(tmp_path / "masked")
    # independently: replay each epoch's augmented batches through the frozen teacher, entropies in numpy
    for row in rows:
        before, after, count = 0.0, 0.0, 0
        for batch in trainer.train_loader.epoch(row["epoch"] - 1):
            with torch.no_grad():
                logits = trainer.teacher(batch.images).double().tolist()
            before += sum(numpy_entropy(r, 4.0) for r in logits)
            after += sum(numpy_entropy(numpy_top_k(r, 5, -np.inf), 4.0) for r in logits)
            count += len(logits)
        assert row["train/teacher_entropy"] == pytest.approx(before / count, rel=1e-5)
        assert row["train/teacher_entropy_masked"] == pytest.approx(after / count, rel=1e-5)
    last = rows[-1]
    expected = {"T": 4.0, "fill": "-inf", "K": 0.5, "teachers": 1, "unmasked": last["train/teacher_entropy"],
                "masked": last["train/teacher_entropy_masked"]}
    assert summary["teacher_entropy"] == expected
    assert json.loads((tmp_path / "masked" / "summary.json").read_text())["teacher_entropy"] == summary["teacher_entropy"]
    assert "train/teacher_entropy,train/teacher_entropy_masked" in (tmp_path / "masked" / "metrics.csv").read_text().splitlines()[0]
    effect = "lowers" if last["train/teacher_entropy_masked"] < last["train/teacher_entropy"] else "raises"
    line = f"teacher entropy @T=4: {last['train/teacher_entropy']:.2f} → {last['train/teacher_entropy_masked']:.2f} nats (mask {effect} it)"
    assert line in capsys.readouterr().out

    plain = Trainer(load_config(None, TINY + teacher), tmp_path / "plain").fit()
    out = capsys.readouterr().out
    assert out.count("epoch ") == 2 and "teacher entropy" not in out
    assert "teacher_entropy" not in plain and "teacher_entropy" not in json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert not any("entropy" in key for row in rows_of(tmp_path / "plain") for key in row)
    assert "entropy" not in (tmp_path / "plain" / "metrics.csv").read_text()
    # K = 1 (teacher cache on)
    keep_all = Trainer(load_config(None, TINY + teacher + ["method.mask.logits=1.0"]), tmp_path / "keep_all").fit()
    assert "(mask leaves it)" in capsys.readouterr().out
    recorded = rows_of(tmp_path / "keep_all")
    for with_entropy, without in zip(recorded, rows_of(tmp_path / "plain")):  # recording it changes no other number
        assert with_entropy["train/teacher_entropy"] == with_entropy["train/teacher_entropy_masked"] > 0
        assert ({k: v for k, v in with_entropy.items() if "entropy" not in k and k != "img_per_s"}
                == {k: v for k, v in without.items() if k != "img_per_s"})
    assert keep_all["teacher_entropy"]["fill"] == "0"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_replays_record_the_same_teacher_entropy_as_eager_steps(tiny_teacher, tmp_path):
    from distillscope.engine.cache import build_cache

    # one epoch: with torch 2.11 + cu130 the recapture at epoch 2 trips an allocator assert in any method (tests/test_fast_path.py too)
    overrides = TINY + ["epochs=1", "run.device=cuda", "data.spec=shapes?n=320&size=16&n_test=40", "method.name=kd", "teacher.name=resnet8",
                        f"teacher.checkpoint={tiny_teacher}", "method.mask.logits=0.7", f"run.teacher_cache={tmp_path / 'cache'}"]
    assert build_cache(load_config(None, overrides))[0][0].complete  # a graph reads a complete cache only
    eager = Trainer(load_config(None, overrides), tmp_path / "eager").fit()
    trainer = Trainer(load_config(None, overrides + ["run.cuda_graph=true"]), tmp_path / "graphed")
    graphed = trainer.fit()
    # 8 steps: 3 eager, then 5 replays (the first right after the capture)
    assert trainer.graphed.graph is not None and trainer.graphed.epoch == 0
    for a, b in zip(rows_of(tmp_path / "eager"), rows_of(tmp_path / "graphed")):
        for key in ("train/teacher_entropy", "train/teacher_entropy_masked"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
    assert graphed["teacher_entropy"]["unmasked"] == pytest.approx(eager["teacher_entropy"]["unmasked"], rel=1e-5)
    assert (math.isfinite(graphed["teacher_entropy"]["masked"])
            and graphed["teacher_entropy"]["masked"] != graphed["teacher_entropy"]["unmasked"])
