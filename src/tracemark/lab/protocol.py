"""The SoK protocol (Lukas et al., S&P 2022) for one attack: does it remove the mark within budget?"""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass, field
from collections.abc import Sequence
from typing import TYPE_CHECKING, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tracemark.attacks.base import Attack, ThiefData
from tracemark.data.batches import batches, check_items, is_stream
from tracemark.keys.key import WatermarkKey
from tracemark.targets.base import Target
from tracemark.verification.null import NullModel
from tracemark.verification.verify import DEFAULT_ALPHA, verify

if TYPE_CHECKING:
    from tracemark.evidence.protocol import Evidence

DEFAULT_BUDGET_POINTS = 2.0
TestSet = Union[tuple[np.ndarray, np.ndarray], Dataset, DataLoader]


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
    combined_verdict: str | None = None
    evidence: dict = field(default_factory=dict)

    @property
    def survived_by(self) -> list[str]:
        """The kinds of evidence the combined verdict rejected for this attack (empty without extra evidence)."""
        return [kind for kind, c in self.evidence.items() if c.get("rejected")]

    @property
    def removed_all(self) -> bool:
        """With extra evidence: within budget and the combined verdict is not ``copy`` (every kind removed)."""
        return self.within_budget and self.combined_verdict is not None and self.combined_verdict != "copy"

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


def target_accuracy(target: Target, x: np.ndarray | Dataset | DataLoader, y: np.ndarray | None = None,
                    chunk: int = 2000, num_workers: int = 0) -> float:
    """Fraction of ``x`` the target labels as ``y``, asked in chunks.

    ``x`` is an image array with labels ``y``, or a ``Dataset``/``DataLoader`` of ``(x, y)``
    (then no ``y``) read ``chunk`` items at a time.
    """
    if is_stream(x):
        if y is not None:
            raise TypeError("target_accuracy: a Dataset or DataLoader carries its own labels; do not pass y")
        hits = total = 0
        for xb, yb in batches(x, batch_size=chunk, num_workers=num_workers):  # type: ignore[arg-type]
            hits += int(np.sum(target.predict_labels(xb.numpy()) == yb.numpy().reshape(-1)))
            total += len(xb)
        return hits / total
    if y is None:
        raise TypeError("target_accuracy: pass the labels y with an image array")
    hits = 0
    for start in range(0, len(x), chunk):
        hits += int(np.sum(target.predict_labels(x[start : start + chunk]) == y[start : start + chunk]))
    return hits / len(x)


def accuracy_on(target: Target, test: TestSet, num_workers: int = 0) -> float:
    """:func:`target_accuracy` on a test set given as ``(x, y)`` arrays or as a Dataset/DataLoader."""
    if is_stream(test):
        return target_accuracy(target, test, num_workers=num_workers)  # type: ignore[arg-type]
    return target_accuracy(target, *test)  # type: ignore[misc]


def held_out_accuracy(model: nn.Module, test: TestSet, device: str | torch.device | None = None,
                      num_workers: int = 0) -> float:
    """:func:`tracemark.accuracy` of a module on ``(x, y)`` arrays or a Dataset/DataLoader of ``(x, y)``, on ``device``."""
    from tracemark.training import accuracy

    if is_stream(test):
        return accuracy(model, test, device=device, num_workers=num_workers)  # type: ignore[arg-type]
    return accuracy(model, *test, device=device)  # type: ignore[misc]


def check_shapes(key: WatermarkKey, thief: ThiefData, test: TestSet) -> None:
    """Refuse thief pools and a test set whose images are not the key's shape, before any attack runs."""
    from tracemark.attacks.base import image_shape
    from tracemark.errors import ShapeMismatchError

    shape = tuple(key.input_shape)
    if is_stream(test):
        check_items(test, shape)  # type: ignore[arg-type]
    for what, pool in (("in-domain", thief.x), ("out-of-domain", thief.ood_x)):
        if pool is not None and len(pool) and image_shape(pool) != shape:  # type: ignore[arg-type]
            raise ShapeMismatchError(f"the thief's {what} images have shape {image_shape(pool)}; the key's triggers "
                                     f"are {shape}: give the thief images of the victim's input shape")


def evaluate_attack(
    attack: Attack,
    victim: nn.Module | Target,
    key: WatermarkKey,
    test: TestSet,
    thief: ThiefData,
    *,
    marked_accuracy: float,
    null: NullModel | None = None,
    alpha: float = DEFAULT_ALPHA,
    budget_points: float = DEFAULT_BUDGET_POINTS,
    evidence: Sequence[Evidence] = (),
) -> AttackRecord:
    """Run ``attack`` on ``victim``, then measure the thief's accuracy on ``test`` and verify ``key``.

    With ``evidence`` (other kinds: a lineage fingerprint, say), the stolen model is also tested with each, and
    the trigger verdict and theirs are combined (:func:`~tracemark.evidence.combine`, family-wise ``alpha``):
    the record keeps each kind's decision and whether the family rejected it. ``removed`` stays the SoK's
    call on the trigger mark alone; ``removed_all`` is the call on the combination.
    An attack that fails is recorded with its error rather than raised, so a sweep completes.
    ``test`` is ``(x, y)`` arrays or a Dataset/DataLoader of ``(x, y)`` (streamed).
    """
    start = time.perf_counter()
    common = dict(attack=attack.name, label=attack.label, kind=attack.kind, access=attack.access,
                  strength=attack.strength, params=attack.params())
    try:
        stolen = attack.run(victim, thief)
        thief_acc = accuracy_on(stolen.target, test, thief.num_workers)
        verdict = verify(key, stolen.target, alpha=alpha, null=null)
        combined = _combined(verdict, key, evidence, stolen.target, alpha) if evidence else None
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
                        seconds=time.perf_counter() - start, info=info,
                        combined_verdict=None if combined is None else combined.verdict,
                        evidence={} if combined is None else {c.result.kind: {
                            "decision": c.result.decision, "p_value": c.result.p_value, "p_adjusted": c.p_adjusted,
                            "rejected": c.rejected, "summary": c.result.summary} for c in combined.components})


def _combined(verdict, key: WatermarkKey, evidence: Sequence[Evidence], target: Target, alpha: float):
    """The trigger ``verdict`` (already asked) and every other kind of ``evidence`` on ``target``, combined."""
    from tracemark.evidence.combine import combine
    from tracemark.evidence.kinds import trigger_result
    from tracemark.evidence.protocol import Commitment

    results = [trigger_result(verdict, Commitment(key.commitment()))]
    return combine(results + [e.test(target, alpha=alpha) for e in evidence], alpha)
