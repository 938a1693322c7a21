"""The robustness lab: null profiles, the SoK removal protocol, attack suites and their results."""

from tracemark.lab.errors import LabError, NullProfileError
from tracemark.lab.nullprofile import FalsePositiveCheck, NullProfile, ReferenceModel, build_null_profile
from tracemark.lab.protocol import DEFAULT_BUDGET_POINTS, AttackRecord, evaluate_attack, target_accuracy
from tracemark.lab.results import KindSummary, SuiteResult
from tracemark.lab.suite import SUITES, make_suite, run_suite
from tracemark.lab.victim import CONFIGS, MarkConfig, marked_victim, out_of_domain_pool, split_thief

__all__ = [
    "CONFIGS",
    "MarkConfig",
    "marked_victim",
    "out_of_domain_pool",
    "split_thief",
    "DEFAULT_BUDGET_POINTS",
    "SUITES",
    "AttackRecord",
    "FalsePositiveCheck",
    "KindSummary",
    "LabError",
    "NullProfile",
    "NullProfileError",
    "ReferenceModel",
    "SuiteResult",
    "build_null_profile",
    "evaluate_attack",
    "make_suite",
    "run_suite",
    "target_accuracy",
]
