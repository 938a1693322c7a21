"""The SoK protocol (Lukas et al., S&P 2022) for one attack: does it remove the mark within budget?"""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass, field

import numpy as np
from torch import nn

from tracemark.attacks.base import Attack, ThiefData
from tracemark.keys.key import WatermarkKey
from tracemark.targets.base import Target
from tracemark.verification.null import NullModel
from tracemark.verification.verify import DEFAULT_ALPHA, verify

DEFAULT_BUDGET_POINTS = 2.0


@dataclass(frozen=True)
class AttackRecord:
    """One attack at one strength: what the thief kept, what verification found, and whether the mark was removed.

    ``removed`` follows the SoK: the verdict is not ``copy`` while the thief's clean accuracy
    is within ``budget_points`` accuracy points of the marked model's.
    """

    attack: str
    label: str
    kind: str
    access: str
    strength: float
    params: dict
    thief_accuracy: float
    accuracy_drop_points: float
    trigger_accuracy: float
    p_value: float
    verdict: str
    within_budget: bool
    removed: bool
    seconds: float
    error: str | None = None
    info: dict = field(default_factory=dict)

    @property
    def change_points(self) -> float:
        """Thief accuracy minus marked accuracy, in points (negative: the thief lost accuracy)."""
        return 0.0 - self.accuracy_drop_points

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AttackRecord":
        return cls(**data)

    def __str__(self) -> str:
        if self.error:
            return f"{self.attack}: FAILED ({self.error.splitlines()[0]})"
        tag = "REMOVED" if self.removed else ("survived" if self.verdict == "copy" else "not copy, but thief lost too much")
        return (f"{self.attack}: thief {100 * self.thief_accuracy:.2f}% ({self.change_points:+.2f} pts), "
                f"triggers {100 * self.trigger_accuracy:.0f}%, p={self.p_value:.2g}, {self.verdict} -> {tag}")


def target_accuracy(target: Target, x: np.ndarray, y: np.ndarray, chunk: int = 2000) -> float:
    """Fraction of ``x`` the target labels as ``y``, asked in chunks."""
    hits = 0
    for start in range(0, len(x), chunk):
        hits += int(np.sum(target.predict_labels(x[start : start + chunk]) == y[start : start + chunk]))
    return hits / len(x)


def evaluate_attack(
    attack: Attack,
    victim: nn.Module | Target,
    key: WatermarkKey,
    test: tuple[np.ndarray, np.ndarray],
    thief: ThiefData,
    *,
    marked_accuracy: float,
    null: NullModel | None = None,
    alpha: float = DEFAULT_ALPHA,
    budget_points: float = DEFAULT_BUDGET_POINTS,
) -> AttackRecord:
    """Run ``attack`` on ``victim``, then measure the thief's accuracy on ``test`` and verify ``key``.

    An attack that fails is recorded with its error rather than raised, so a sweep completes.
    """
    start = time.perf_counter()
    common = dict(attack=attack.name, label=attack.label, kind=attack.kind, access=attack.access,
                  strength=attack.strength, params=attack.params())
    try:
        stolen = attack.run(victim, thief)
        thief_acc = target_accuracy(stolen.target, *test)
        verdict = verify(key, stolen.target, alpha=alpha, null=null)
    except Exception as exc:  # noqa: BLE001 - a sweep records failures and carries on
        return AttackRecord(**common, thief_accuracy=float("nan"), accuracy_drop_points=float("nan"),  # type: ignore[arg-type]
                            trigger_accuracy=float("nan"), p_value=float("nan"), verdict="error", within_budget=False,
                            removed=False, seconds=time.perf_counter() - start,
                            error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}")
    drop = 100.0 * (marked_accuracy - thief_acc)
    within = drop <= budget_points
    info = {k: v for k, v in stolen.info.items() if isinstance(v, (int, float, str, list))}
    return AttackRecord(**common, thief_accuracy=thief_acc, accuracy_drop_points=drop,  # type: ignore[arg-type]
                        trigger_accuracy=verdict.match_rate, p_value=verdict.p_value, verdict=verdict.verdict,
                        within_budget=within, removed=within and verdict.verdict != "copy",
                        seconds=time.perf_counter() - start, info=info)
