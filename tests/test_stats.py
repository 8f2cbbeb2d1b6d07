"""report.stats: differences between per-seed scores, checked against scipy's t-tests, and the minimum detectable
effect checked by the power it gives (noncentral t written out here, and a Monte-Carlo of the paired test)."""
import numpy as np
import pytest
from scipy import stats

from distillscope.report.stats import minimum_detectable_effect, paired, welch

A = [71.2, 72.0, 70.5, 73.1, 71.9]
B = [70.1, 71.5, 70.9, 71.0, 70.2]
C = [68.0, 70.5, 69.1, 69.9]


def power(delta: float, se: float, df: float) -> float:
    """Probability that |t| exceeds the two-sided 5% critical value when t has noncentrality delta / se."""
    crit = stats.t.ppf(0.975, df)
    return stats.nct.sf(crit, df, delta / se) + stats.nct.cdf(-crit, df, delta / se)


def test_paired_matches_scipy_ttest_rel():
    d, ref = paired(A, B), stats.ttest_rel(A, B)
    ci = ref.confidence_interval(0.95)
    assert d.test == "paired" and d.n == d.n_other == 5 and d.label == "paired, n=5"
    assert d.diff == pytest.approx(np.mean(np.subtract(A, B)))
    assert (d.ci_low, d.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert d.p == pytest.approx(ref.pvalue, rel=1e-10) and d.df == ref.df == 4


def test_welch_matches_scipy_ttest_ind():
    d, ref = welch(A, C), stats.ttest_ind(A, C, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert d.test == "Welch" and (d.n, d.n_other) == (5, 4) and d.label == "Welch, n=5 vs 4"
    assert d.diff == pytest.approx(np.mean(A) - np.mean(C))
    assert (d.ci_low, d.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert d.p == pytest.approx(ref.pvalue, rel=1e-10) and d.df == pytest.approx(ref.df, rel=1e-10)
    assert 3 < d.df < 7  # Welch-Satterthwaite, not n1 + n2 - 2


def test_mde_gives_80_percent_power():
    diffs = np.subtract(A, B)
    se_paired = np.std(diffs, ddof=1) / np.sqrt(len(diffs))
    se_welch = np.sqrt(np.var(A, ddof=1) / len(A) + np.var(C, ddof=1) / len(C))
    for d, se in ((paired(A, B), se_paired), (welch(A, C), se_welch)):
        assert power(d.mde, se, d.df) == pytest.approx(0.8, abs=1e-6)
        assert power(0.9 * d.mde, se, d.df) < 0.75  # not any δ: the power rises with δ
    assert minimum_detectable_effect(1.0, 10_000) == pytest.approx(stats.norm.ppf(0.975) + stats.norm.ppf(0.8), rel=1e-3)  # large n: z's


@pytest.mark.parametrize("n", [2, 5])
def test_paired_mde_monte_carlo(n):
    """20000 experiments of n pairs whose differences are N(MDE, s_d): the t-test rejects in 80% of them."""
    rng = np.random.default_rng(0)
    a = rng.normal(70, 1, n)
    b = a - rng.normal(0.5, 0.8, n)
    d = paired(a.tolist(), b.tolist())
    s_d = np.std(a - b, ddof=1)
    draws = rng.normal(d.mde, s_d, size=(20_000, n))
    t = draws.mean(axis=1) / (draws.std(axis=1, ddof=1) / np.sqrt(n))
    assert np.mean(np.abs(t) > stats.t.ppf(0.975, n - 1)) == pytest.approx(0.8, abs=0.01)


def test_verdicts():
    same = paired(A, [x + 0.1 * (-1) ** i for i, x in enumerate(A)])
    assert same.ci_low < 0 < same.ci_high and not same.detected
    assert same.verdict() == f"no detectable difference at 5 seeds (MDE {same.mde:.1f})"
    unpaired = welch(A, [x + 0.1 for x in A])
    assert unpaired.verdict() == f"no detectable difference at 5 vs 5 seeds (MDE {unpaired.mde:.1f})"
    up, down = paired([x + 2 for x in B], B[:3] + [B[3] + 0.3, B[4]]), welch(C, A)
    assert up.ci_low > 0 and up.verdict() == f"above ({up.diff:+.2f})"
    assert down.ci_high < 0 and down.verdict() == f"below ({down.diff:+.2f})" and down.verdict().startswith("below (-")


def test_too_few_seeds_or_no_spread_are_not_applicable():
    one = paired([70.0], [69.0])
    assert one.diff is one.mde is None and one.verdict() == "n/a (1 pair, need 2)"
    assert welch([70.0], A).verdict() == "n/a (1 seed on one side, need 2 each)" and welch([70.0], A).label == "Welch, n=1 vs 5"
    assert paired(A, [x - 1 for x in A]).verdict() == "n/a (no spread between seeds)"
    with pytest.raises(ValueError):
        paired(A, B[:3])
