"""The statistics behind a verdict: binomial tail p-values and Clopper-Pearson bounds."""

from __future__ import annotations

import math

from scipy import stats


def binomial_pvalue(matches: int, queries: int, null_rate: float) -> float:
    """P(X >= matches) for X ~ Binomial(queries, null_rate): the chance an innocent model does as well."""
    if queries <= 0 or matches <= 0:
        return 1.0
    return float(stats.binom.sf(matches - 1, queries, null_rate))


def min_matches_for(alpha: float, queries: int, null_rate: float) -> int | None:
    """The fewest matches out of ``queries`` whose p-value is at most ``alpha`` (None if none is)."""
    if queries <= 0 or null_rate ** queries > alpha:
        return None
    lo, hi = 1, queries
    while lo < hi:
        mid = (lo + hi) // 2
        if binomial_pvalue(mid, queries, null_rate) <= alpha:
            hi = mid
        else:
            lo = mid + 1
    return lo


def clopper_pearson_upper(successes: int, trials: int, confidence: float) -> float:
    """One-sided exact upper confidence bound on a binomial rate."""
    if trials <= 0:
        return 1.0
    if successes >= trials:
        return 1.0
    return float(stats.beta.ppf(confidence, successes + 1, trials - successes))


def log10_or_floor(p: float) -> float:
    """log10 of a p-value, floored at -300 for p == 0 (underflow)."""
    return math.log10(p) if p > 0 else -300.0
