"""Seed statistics: mean, sample standard deviation, Student's t interval, and the paired t-test over seeds.

Student's t distribution is computed here from the regularised incomplete beta function (a continued fraction, as in
Numerical Recipes 6.4), so the sweep needs no SciPy; ``tests/test_sweep_stats.py`` checks every figure against SciPy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    """One configuration point's results over seeds.

    Attributes:
        n: Number of finished seeds.
        mean: Their mean.
        sd: Sample standard deviation (``n - 1`` in the denominator); ``nan`` for ``n < 2``.
        ci_low: Lower end of the ``level`` confidence interval of the mean (Student's t); ``nan`` for ``n < 2``.
        ci_high: Upper end of that interval.
        min: Smallest value.
        max: Largest value.
    """

    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    min: float
    max: float

    def mean_sd(self) -> str:
        """``0.8628 ± 0.0080``, or the mean alone from a single seed: how every sweep output writes a point's figure."""
        return f"{self.mean:.4f}" if self.n < 2 else f"{self.mean:.4f} ± {self.sd:.4f}"

    def interval(self) -> str:
        """The 95% interval as ``[0.8429, 0.8827]``; empty from a single seed."""
        return "" if self.n < 2 else f"[{self.ci_low:.4f}, {self.ci_high:.4f}]"


def summarize(values: Sequence[float], level: float = 0.95) -> Summary:
    """Mean, sd, the Student's t confidence interval of the mean, min and max of ``values`` (one per seed)."""
    if not values:
        raise ValueError("summarize needs at least one value")
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return Summary(n, mean, math.nan, math.nan, math.nan, min(values), max(values))
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return Summary(n, mean, sd, mean - half, mean + half, min(values), max(values))


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """The paired t-test of ``a`` against ``b`` (the same seeds, in the same order), two-sided.

    Returns:
        ``(t, p)``: the statistic of ``mean(a - b)`` and its two-sided p-value. With identical differences (no
        spread) ``t`` is infinite and ``p`` is 0, or ``t`` and ``p`` are ``nan`` when every difference is 0.

    Raises:
        ValueError: ``a`` and ``b`` differ in length or hold fewer than 2 pairs.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_t_test needs pairs: {len(a)} and {len(b)} values")
    n = len(a)
    if n < 2:
        raise ValueError("paired_t_test needs at least 2 pairs")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean = math.fsum(diffs) / n
    sd = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1))
    if sd == 0:
        return (math.nan, math.nan) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
    t = mean / (sd / math.sqrt(n))
    return t, t_two_sided_p(t, n - 1)


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    return _betainc(df / 2, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * t_two_sided_p(t, df)
    return 1 - tail if t > 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`)."""
    if not 0 < q < 1:
        raise ValueError(f"quantile {q} is not in (0, 1)")
    if q < 0.5:
        return -t_quantile(1 - q, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < q:
        high *= 2
    for _ in range(200):  # halves the bracket to far below float precision
        mid = (low + high) / 2
        if t_cdf(mid, df) < q:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    # The continued fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry I_x(a,b) = 1 - I_1-x(b,a).
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def _betacf(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 1e-16
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < eps:
            break
    return h


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` for testing them together (family-wise error rate).

    The ``k``-th smallest p-value of ``m`` is multiplied by ``m - k + 1``, kept at least as large as the adjusted
    value before it, and capped at 1. ``nan`` (an untested pair) stays ``nan`` and does not count in ``m``.
    Returns the adjusted values in the input order.
    """
    tested = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for k, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - k) * p))
        adjusted[i] = running
    return adjusted
