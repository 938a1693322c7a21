"""Calibration: the pooled Clopper-Pearson bound, its fit check, and inconclusive for a pool too small for alpha."""

from __future__ import annotations

import numpy as np
import pytest

from tracemark.lineage import Calibration, LineageEvidence, LineageFileError, calibrate
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


def _refs(expected: np.ndarray, counts: tuple[int, ...]) -> list[Fixed]:
    return [Fixed(np.where(np.arange(len(expected)) < a, expected, (expected + 1) % 10), f"r{i}") for i, a in enumerate(counts)]


def test_default_bound_is_the_most_agreeable_reference_and_p_value():
    expected = np.arange(100) % 10
    cal = calibrate(np.zeros((100, 1, 2, 2), np.uint8), expected, _refs(expected, (3, 5, 4, 6, 2, 5)))
    assert cal.rule == "worst-reference" and cal.bound == "worst-reference" and cal.agreements == (3, 5, 4, 6, 2, 5)
    assert cal.pooled_rate == pytest.approx(25 / 600) and cal.fit_p is not None and cal.fit_p > 0.01
    assert cal.rate == pytest.approx(clopper_pearson_upper(6, 100, 1 - 1e-9))
    assert cal.rate > clopper_pearson_upper(25, 600, 1 - 1e-9)
    assert cal.p_value(90) < 1e-30 < cal.p_value(20) and cal.p_value(0) == 1.0
    assert cal.too_small(1e-9) is None and cal.error_rate(1e-9) == pytest.approx(2e-9)


def test_fit_checked_rule_pools_unless_one_reference_stands_out():
    expected = np.arange(100) % 10
    cal = calibrate(np.zeros((100, 1, 2, 2), np.uint8), expected, _refs(expected, (3, 5, 4, 6, 2, 5)), rule="fit-checked")
    assert cal.bound == "pooled" and cal.rate == pytest.approx(clopper_pearson_upper(25, 600, 1 - 1e-9))
    bound, rate, fit = null_rate([1, 0, 2, 1, 60], 100, 1 - 1e-9, "fit-checked")
    assert bound == "worst-reference" and fit < 0.01 and rate == pytest.approx(clopper_pearson_upper(60, 100, 1 - 1e-9))
    with pytest.raises(ValueError, match="unknown calibration rule"):
        null_rate([1, 2], 100, 1 - 1e-9, "pooled")


def test_record_without_a_rule_reads_as_fit_checked(built):
    """Version-1 files written before the rule field existed were calibrated fit-checked; they still verify."""
    lineage = built.build.lineage
    refs = _refs(lineage.labels, (3, 5, 4, 6, 2, 5))
    old = calibrate(lineage.inputs, lineage.labels, refs, rule="fit-checked").to_dict()
    del old["rule"]
    parsed = Calibration.from_dict(old, len(lineage.labels), "old.lineage")
    assert parsed.rule == "fit-checked" and parsed.bound == "pooled"
    with pytest.raises(LineageFileError, match="does not follow from its agreements"):
        Calibration.from_dict({**old, "rule": "worst-reference"}, len(lineage.labels), "old.lineage")


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
    assert cal.too_small(0.6) is None
