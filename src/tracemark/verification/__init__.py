"""Verification: query a target with a key's triggers and decide with a stated error rate."""

from tracemark.verification.null import NullModel, choose_null, empirical_null, keyed_null
from tracemark.verification.stats import binomial_pvalue, clopper_pearson_upper, min_matches_for
from tracemark.verification.verdict import Verdict
from tracemark.verification.verify import DEFAULT_ALPHA, verify

__all__ = [
    "DEFAULT_ALPHA",
    "NullModel",
    "Verdict",
    "binomial_pvalue",
    "choose_null",
    "clopper_pearson_upper",
    "empirical_null",
    "keyed_null",
    "min_matches_for",
    "verify",
]
