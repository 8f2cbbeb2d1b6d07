"""Is a difference between two sets of per-seed scores real? Mean difference, Student-t confidence interval,
two-sided p-value and the minimum detectable effect (MDE) of the same t-test.

``paired(a, b)`` tests the per-seed differences ``a[i] − b[i]`` (paired t, df n − 1); ``welch(a, b)`` compares
the means of two independent sets (Welch's t, Welch–Satterthwaite df). The MDE is the true difference at which
the two-sided test at level α rejects with the given power, solved exactly on the noncentral t distribution.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Difference:
    """``a − b``. ``n``: pairs (paired) or seeds in ``a`` (Welch); ``n_other``: pairs or seeds in ``b``.
    The numbers are None where the test cannot be made, and ``reason`` says why."""

    test: str  # "paired" or "Welch"
    n: int
    n_other: int
    diff: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p: float | None = None
    df: float | None = None
    mde: float | None = None
    reason: str = ""

    @property
    def label(self) -> str:
        """``paired, n=10`` or ``Welch, n=10 vs 8``."""
        return f"paired, n={self.n}" if self.test == "paired" else f"Welch, n={self.n} vs {self.n_other}"

    @property
    def detected(self) -> bool:
        """True when the confidence interval excludes 0."""
        return self.diff is not None and not self.ci_low <= 0 <= self.ci_high

    def verdict(self) -> str:
        """``above (+1.23)``, ``below (-0.85)``, ``no detectable difference at 10 seeds (MDE 1.4)`` or ``n/a (…)``."""
        if self.diff is None:
            return f"n/a ({self.reason})"
        if not self.detected:
            seeds = self.n if self.test == "paired" else f"{self.n} vs {self.n_other}"
            return f"no detectable difference at {seeds} seeds (MDE {self.mde:.1f})"
        return f"{'above' if self.diff > 0 else 'below'} ({self.diff:+.2f})"


def minimum_detectable_effect(se: float, df: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The true difference δ at which the two-sided t-test (level ``alpha``, ``df``) rejects with probability
    ``power`` when the statistic is t with noncentrality δ / ``se``. The lower tail P(T < −c) is taken as
    P(T' > c) with noncentrality −δ / ``se`` (scipy's far-left ``nct.cdf`` can be NaN at df 1)."""
    from scipy import optimize, stats  # here, not at import: scipy.stats takes seconds to load

    crit = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(delta: float) -> float:
        nc = delta / se
        return stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc) - power

    high = se * (crit + 1)
    while shortfall(high) < 0:
        high *= 2
    return float(optimize.brentq(shortfall, 0.0, high, xtol=1e-12 * high))


def _t_test(test: str, n: int, n_other: int, diff: float, se: float, df: float, confidence: float, power: float) -> Difference:
    from scipy import stats

    if se == 0:
        return Difference(test, n, n_other, reason="no spread between seeds")
    half = float(stats.t.ppf((1 + confidence) / 2, df)) * se
    p = 2 * float(stats.t.sf(abs(diff) / se, df))
    mde = minimum_detectable_effect(se, df, 1 - confidence, power)
    return Difference(test, n, n_other, diff, diff - half, diff + half, p, df, mde)


def paired(a: list[float], b: list[float], confidence: float = 0.95, power: float = 0.8) -> Difference:
    """Paired t over ``a[i] − b[i]``: noncentrality δ·√n / s_d, df n − 1."""
    if len(a) != len(b):
        raise ValueError(f"paired: {len(a)} values vs {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    if n < 2:
        return Difference("paired", n, n, reason=f"{n} pair{'s' * (n != 1)}, need 2")
    return _t_test("paired", n, n, statistics.fmean(d), statistics.stdev(d) / math.sqrt(n), n - 1, confidence, power)


def welch(a: list[float], b: list[float], confidence: float = 0.95, power: float = 0.8) -> Difference:
    """Welch's t for mean(a) − mean(b): noncentrality δ / √(s₁²/n₁ + s₂²/n₂), Welch–Satterthwaite df."""
    n1, n2 = len(a), len(b)
    if min(n1, n2) < 2:
        return Difference("Welch", n1, n2, reason=f"{min(n1, n2)} seed{'s' * (min(n1, n2) != 1)} on one side, need 2 each")
    v1, v2 = statistics.variance(a) / n1, statistics.variance(b) / n2
    if v1 + v2 == 0:
        return Difference("Welch", n1, n2, reason="no spread between seeds")
    df = (v1 + v2) ** 2 / (v1**2 / (n1 - 1) + v2**2 / (n2 - 1))
    return _t_test("Welch", n1, n2, statistics.fmean(a) - statistics.fmean(b), math.sqrt(v1 + v2), df, confidence, power)
