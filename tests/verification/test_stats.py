"""Statistics behind the verdict."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tracemark.verification import binomial_pvalue, clopper_pearson_upper, min_matches_for


def test_binomial_pvalue_matches_direct_sum():
    n, p = 30, 0.1
    for m in (0, 1, 5, 12, 30):
        direct = sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(m, n + 1))
        assert binomial_pvalue(m, n, p) == pytest.approx(direct if m > 0 else 1.0, rel=1e-9)


def test_min_matches_is_the_smallest_reaching_alpha():
    for alpha in (1e-3, 1e-9, 1e-12):
        m = min_matches_for(alpha, 100, 1 / 9)
        assert binomial_pvalue(m, 100, 1 / 9) <= alpha < binomial_pvalue(m - 1, 100, 1 / 9)
    assert min_matches_for(1e-12, 5, 0.5) is None  # 0.5**5 > 1e-12: unreachable


def test_clopper_pearson_upper_bound_covers_true_rate():
    rng = np.random.default_rng(0)
    true_rate, covered = 0.2, 0
    for _ in range(300):
        k = rng.binomial(50, true_rate)
        covered += clopper_pearson_upper(k, 50, 0.95) >= true_rate
    assert covered >= 0.93 * 300
    assert clopper_pearson_upper(0, 1000, 0.999) < 0.01
    assert clopper_pearson_upper(10, 10, 0.9) == 1.0
