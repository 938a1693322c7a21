"""The SoK protocol: what counts as removal, and how failures are recorded."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from torch import nn

import tracemark as tm
from tracemark.attacks import Attack, Stolen, ThiefData
from tracemark.lab import evaluate_attack


@dataclass(frozen=True)
class Replace(Attack):
    """A test attack: the thief ends up with a given model."""

    model: Any = None
    kind = "finetune"

    @property
    def strength(self) -> float:
        return 1.0

    def params(self) -> dict:
        return {}

    def run(self, victim, thief: ThiefData) -> Stolen:
        if self.model is None:
            raise RuntimeError("boom")
        return Stolen(tm.TorchTarget(self.model), self.model)


def _eval(models, thief, model: nn.Module | None, budget: float = 2.0):
    data = models.data
    marked_acc = tm.accuracy(models.marked, data.x_test, data.y_test)
    return evaluate_attack(Replace(model), models.marked, models.key, (data.x_test, data.y_test), thief,
                           marked_accuracy=marked_acc, budget_points=budget), marked_acc


def test_a_copy_is_not_removed(models, lab_thief):
    record, marked_acc = _eval(models, lab_thief, copy.deepcopy(models.marked))
    assert record.verdict == "copy" and record.within_budget and not record.removed
    assert record.thief_accuracy == marked_acc and record.trigger_accuracy >= 0.99


def test_an_unmarked_model_within_budget_removes_the_mark(models, lab_thief):
    record, _ = _eval(models, lab_thief, models.base, budget=100.0)
    assert record.verdict == "no-evidence" and record.removed


def test_losing_too_much_accuracy_is_not_removal(models, lab_thief):
    record, marked_acc = _eval(models, lab_thief, models.base, budget=-1.0)
    assert record.verdict != "copy" and not record.within_budget and not record.removed
    assert math.isclose(record.accuracy_drop_points, 100 * (marked_acc - record.thief_accuracy))


def test_a_failing_attack_is_recorded_not_raised(models, lab_thief):
    record, _ = _eval(models, lab_thief, None)
    assert record.verdict == "error" and "boom" in record.error and not record.removed
    assert "FAILED" in str(record)
