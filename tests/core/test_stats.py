"""Exact binomial tail, Clopper–Pearson interval and McNemar test against closed forms (and SciPy
where it is installed)."""

from __future__ import annotations

import math

import pytest

from bastion.core.stats import binom_cdf, binom_sf, clopper_pearson, mcnemar_greater


def test_binomial_tail_closed_forms() -> None:
    assert binom_sf(0, 10, 0.3) == 1.0
    assert binom_sf(7, 7, 0.5) == pytest.approx(0.5 ** 7)
    assert binom_sf(1, 20, 0.1) == pytest.approx(1 - 0.9 ** 20)
    assert binom_cdf(3, 3, 0.2) == 1.0 and binom_cdf(0, 5, 0.2) == pytest.approx(0.8 ** 5)
    assert binom_sf(3, 100, 0.0) == 0.0 and binom_sf(3, 100, 1.0) == 1.0


def test_clopper_pearson_edges_have_closed_forms() -> None:
    n, a = 60, 0.05
    assert clopper_pearson(0, n) == pytest.approx((0.0, 1 - (a / 2) ** (1 / n)))
    assert clopper_pearson(n, n) == pytest.approx(((a / 2) ** (1 / n), 1.0))
    lo, hi = clopper_pearson(37, 200, 0.9)
    assert lo < 37 / 200 < hi and binom_sf(37, 200, lo) == pytest.approx(0.05, rel=1e-6)


def test_against_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for k, n in ((1, 97), (5, 100), (40, 41)):
        ci = stats.binomtest(k, n).proportion_ci(0.95, "exact")
        assert clopper_pearson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
        assert binom_sf(k, n, 0.02) == pytest.approx(stats.binom.sf(k - 1, n, 0.02), rel=1e-9)


def test_mcnemar_is_one_sided_on_discordant_pairs() -> None:
    assert mcnemar_greater(1, 0) == 0.5  # one input one run missed proves nothing
    assert mcnemar_greater(7, 0) == pytest.approx(1 / 128)
    assert mcnemar_greater(2, 30) > 0.99
    assert mcnemar_greater(10, 3) == pytest.approx(sum(math.comb(13, i) for i in range(10, 14)) / 2 ** 13)


def test_bad_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="k <= n"):
        binom_sf(5, 3, 0.5)
    with pytest.raises(ValueError, match="confidence"):
        clopper_pearson(1, 3, 1.5)
