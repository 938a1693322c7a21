"""Calibration: the pooled Clopper-Pearson bound, its fit check, and inconclusive for a pool too small for alpha."""

from __future__ import annotations

import numpy as np
import pytest

from tracemark.lineage import LineageEvidence, calibrate
from tracemark.lineage.calibrate import null_rate
from tracemark.lineage.fileformat import Lineage
from tracemark.targets.base import Answers, Target
from tracemark.targets.local import TorchTarget
from tracemark.verification.stats import clopper_pearson_upper


class Fixed(Target):
    """A reference that answers a fixed label vector (the test's stand-in for a trained model's answers)."""

    def __init__(self, labels: np.ndarray, name: str):
        self.labels, self.description = labels, name

    def _answer(self, x: np.ndarray) -> Answers:
        return Answers(self.labels[: len(x)])


def test_pooled_bound_and_p_value():
    expected = np.arange(100) % 10
    refs = [Fixed(np.where(np.arange(100) < a, expected, (expected + 1) % 10), f"r{a}") for a in (3, 5, 4, 6, 2, 5)]
    cal = calibrate(np.zeros((100, 1, 2, 2), np.uint8), expected, refs)
    assert cal.bound == "pooled" and cal.agreements == (3, 5, 4, 6, 2, 5) and cal.pooled_rate == pytest.approx(25 / 600)
    assert cal.rate == pytest.approx(clopper_pearson_upper(25, 600, 1 - 1e-9))
    assert cal.p_value(90) < 1e-50 < cal.p_value(20) and cal.p_value(0) == 1.0
    assert cal.too_small(1e-9) is None and cal.error_rate(1e-9) == pytest.approx(2e-9)


def test_one_reference_far_above_the_others_switches_to_its_own_bound():
    bound, rate, fit = null_rate([1, 0, 2, 1, 60], 100, 1 - 1e-9)
    assert bound == "worst-reference" and fit < 0.01 and rate == pytest.approx(clopper_pearson_upper(60, 100, 1 - 1e-9))


def test_too_few_references_is_inconclusive_even_for_a_copy(built):
    lineage = built.build.lineage
    two = [TorchTarget(m.model, description=m.spec.name) for m in built.build.pool.select("calibration")[:2]]
    small = calibrate(lineage.inputs, lineage.labels, two)
    assert small.too_small(1e-9).startswith("2 calibration references are too few")
    weak = LineageEvidence(Lineage(**{**lineage.__dict__, "calibration": small}))
    result = weak.test(TorchTarget(built.marked), alpha=1e-9)
    assert result.decision == "inconclusive" and result.details["matches"] == 100
    assert "too few" in result.summary


def test_too_few_inputs_says_which_alpha_the_pool_supports():
    expected = np.arange(8) % 10
    refs = [Fixed((expected + 1) % 10, f"r{i}") for i in range(5)]
    cal = calibrate(np.zeros((8, 1, 2, 2), np.uint8), expected, refs)
    assert cal.agreements == (0,) * 5
    reason = cal.too_small(1e-9)
    assert reason is not None and f"alpha >= {cal.supported_alpha():.2g}" in reason and cal.supported_alpha() > 1e-9
    assert cal.too_small(0.5) is None
