"""Seed statistics against SciPy on fixed numbers: mean, sd, Student's t interval, paired t-test, t quantiles."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bertft.sweep.stats import paired_t_test, summarize, t_cdf, t_quantile

# Five seeds of two heads (made-up accuracies of the size fine-tuning gives).
A = [0.912, 0.905, 0.921, 0.899, 0.913]
B = [0.901, 0.907, 0.910, 0.890, 0.905]


def test_summary_matches_scipy() -> None:
    s = summarize(A)
    low, high = stats.t.interval(0.95, len(A) - 1, loc=np.mean(A), scale=stats.sem(A))
    assert s.n == 5
    assert s.mean == pytest.approx(np.mean(A), abs=1e-12)
    assert s.sd == pytest.approx(np.std(A, ddof=1), abs=1e-12)
    assert (s.ci_low, s.ci_high) == pytest.approx((low, high), abs=1e-10)
    assert (s.min, s.max) == (min(A), max(A))


def test_one_seed_has_no_spread() -> None:
    s = summarize([0.9])
    assert s.mean == 0.9
    assert math.isnan(s.sd)
    assert math.isnan(s.ci_low)


def test_paired_t_test_matches_scipy() -> None:
    t, p = paired_t_test(A, B)
    reference = stats.ttest_rel(A, B)
    assert t == pytest.approx(reference.statistic, rel=1e-10)
    assert p == pytest.approx(reference.pvalue, rel=1e-8)
    assert p < 0.05  # these numbers were chosen to differ; the reverse order gives the same p
    assert paired_t_test(B, A)[1] == pytest.approx(p, rel=1e-12)


def test_paired_t_test_two_seeds_and_no_difference() -> None:
    t, p = paired_t_test([0.5, 0.7], [0.4, 0.5])
    reference = stats.ttest_rel([0.5, 0.7], [0.4, 0.5])
    assert (t, p) == pytest.approx((reference.statistic, reference.pvalue), rel=1e-8)
    t, p = paired_t_test([0.5, 0.6], [0.5, 0.6])
    assert math.isnan(t)
    assert math.isnan(p)
    with pytest.raises(ValueError, match="at least 2"):
        paired_t_test([0.5], [0.4])


@pytest.mark.parametrize("df", [1, 2, 4, 9, 30, 250])
def test_t_distribution_matches_scipy(df: int) -> None:
    for q in (0.6, 0.9, 0.975, 0.995):
        assert t_quantile(q, df) == pytest.approx(stats.t.ppf(q, df), rel=1e-9)
        assert t_quantile(1 - q, df) == pytest.approx(stats.t.ppf(1 - q, df), rel=1e-9)
    for t in (-3.0, -0.5, 0.0, 0.7, 2.5, 12.0):
        assert t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), abs=1e-12)


def test_summary_text_is_the_mean_alone_from_one_seed() -> None:
    """Every sweep output writes a point's figure with these two methods, so one seed never shows `± nan`."""
    many = summarize([0.85, 0.86, 0.87])
    assert many.mean_sd() == "0.8600 ± 0.0100"
    assert many.interval() == f"[{many.ci_low:.4f}, {many.ci_high:.4f}]"
    one = summarize([0.85])
    assert one.mean_sd() == "0.8500"
    assert one.interval() == ""
