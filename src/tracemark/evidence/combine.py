"""One combined verdict: every kind of evidence's result, decided together with family-wise error control.

``combine`` runs Holm's step-down procedure over the components: sort the m p-values, the i-th smallest gets
``max over j <= i of min(1, (m - j + 1) p_(j))``, and a component is rejected (its kind says "copy") when its
adjusted p-value is at most ``alpha``. Whatever the dependence between the kinds, the chance that any component is
rejected for a suspect that derives from nothing of ours is at most ``alpha``. The combined p-value is the smallest
adjusted one (``m`` times the smallest p-value: Bonferroni), so ``copy`` exactly when it is at most ``alpha``.

Two kinds of component stay in the family (``m`` counts them) but cannot be rejected, as if their p-value were 1:
one that was ``inconclusive`` on its own (it could not support alpha), and one whose commitment is not earlier than
the time the suspect was first seen (``suspect_seen``): evidence fixed after the suspect existed may have been
crafted against it (the False Claims attack), so it cannot count.

The verdict is ``copy`` if any component is rejected; ``inconclusive`` when no component could decide (each was
inconclusive or cannot count) and at least one was inconclusive; ``no-evidence`` otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from tracemark.evidence.errors import EvidenceError
from tracemark.evidence.protocol import Evidence, EvidenceLabel, EvidenceResult

if TYPE_CHECKING:
    from tracemark.targets.base import Target

LATE_COMMITMENT = "committed after the suspect was seen: cannot count"


@dataclass(frozen=True)
class Component:
    """One kind's result inside a combined verdict: its Holm-adjusted p-value, whether the family rejected it, and
    whether it could count (``counts`` is False, with ``note`` saying why, for a commitment not earlier than the
    suspect's first-seen time)."""

    result: EvidenceResult
    p_adjusted: float
    rejected: bool
    counts: bool = True
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**self.result.to_dict(), "p_adjusted": self.p_adjusted, "rejected": self.rejected, "counts": self.counts,
                "note": self.note}

    def __str__(self) -> str:
        call = "REJECTED (counts as copy)" if self.rejected else "not rejected"
        lines = [f"{self.result}", f"  family: Holm-adjusted p {_p(self.p_adjusted)}: {call}"]
        if self.result.commitment is not None:
            c = self.result.commitment
            when = c.committed_at.isoformat() if c.committed_at is not None else "time not vouched"
            lines.append(f"  commitment {c.digest[:16]}…, {when}" + (f" ({c.vouched_by})" if c.vouched_by else ""))
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)


@dataclass(frozen=True)
class CombinedVerdict:
    """Every component and the family-wise decision over them (see the module docstring).

    ``p_value`` is the smallest Holm-adjusted p-value (Bonferroni over the ``components``); ``verdict`` is ``copy``
    when at least one component is rejected at ``alpha``.
    """

    verdict: EvidenceLabel
    p_value: float
    alpha: float
    target: str
    components: list[Component]
    suspect_seen: datetime | None = None
    method: str = "holm"

    @property
    def is_copy(self) -> bool:
        return self.verdict == "copy"

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "p_value": self.p_value, "alpha": self.alpha, "target": self.target,
                "method": self.method, "suspect_seen": None if self.suspect_seen is None else self.suspect_seen.isoformat(),
                "components": [c.to_dict() for c in self.components]}

    def __str__(self) -> str:
        kinds = ", ".join(c.result.kind for c in self.components)
        lines = [f"combined verdict: {self.verdict.upper()}  (target: {self.target})",
                 f"  p-value: {_p(self.p_value)} against alpha {self.alpha:.0e}, family-wise over {len(self.components)} "
                 f"kinds of evidence ({kinds}; Holm step-down)"]
        if self.suspect_seen is not None:
            lines.append(f"  suspect first seen: {self.suspect_seen.isoformat()}")
        for component in self.components:
            lines += ["", *component.__str__().splitlines()]
        return "\n".join(lines)


def _p(p: float) -> str:
    return f"{p:.3g}" if p > 0 else "< 1e-300"


def _utc(when: datetime) -> datetime:
    """``when`` as an aware datetime (a naive one is read as UTC)."""
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the order given."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _late(result: EvidenceResult, suspect_seen: datetime | None) -> bool:
    c = result.commitment
    return (suspect_seen is not None and c is not None and c.committed_at is not None
            and _utc(c.committed_at) >= _utc(suspect_seen))


def combine(results: Sequence[EvidenceResult], alpha: float, *, suspect_seen: datetime | None = None) -> CombinedVerdict:
    """Decide over ``results`` with family-wise error rate at most ``alpha`` (Holm; see the module docstring).

    ``suspect_seen`` is when the suspect was first seen: a component committed at or after it is flagged and cannot
    be rejected. A naive datetime is read as UTC.
    """
    if not 0 < alpha < 1:
        raise EvidenceError(f"alpha must be in (0, 1), not {alpha!r}")
    if not results:
        raise EvidenceError("no evidence to combine: give at least one kind")
    late = [_late(r, suspect_seen) for r in results]
    can_decide = [not is_late and r.decision != "inconclusive" for r, is_late in zip(results, late)]
    adjusted = holm([r.p_value if ok else 1.0 for r, ok in zip(results, can_decide)])
    components = []
    for r, is_late, ok, p in zip(results, late, can_decide, adjusted):
        note = LATE_COMMITMENT if is_late else ""
        if (not is_late and suspect_seen is not None and r.commitment is not None and r.commitment.committed_at is None):
            note = "no vouched commitment time: it cannot be shown to predate the suspect"
        components.append(Component(r, p, ok and p <= alpha, not is_late, note))
    if any(c.rejected for c in components):
        verdict: EvidenceLabel = "copy"
    elif not any(can_decide) and any(r.decision == "inconclusive" for r in results):
        verdict = "inconclusive"
    else:
        verdict = "no-evidence"
    targets = list(dict.fromkeys(r.target for r in results))
    return CombinedVerdict(verdict, min(adjusted), alpha, "; ".join(targets), components,
                           None if suspect_seen is None else _utc(suspect_seen))


def verify_all(target: Target, evidence: Sequence[Evidence], alpha: float = 1e-9, *,
               suspect_seen: datetime | None = None) -> CombinedVerdict:
    """Test ``target`` with every kind of ``evidence`` (each at ``alpha`` on its own) and :func:`combine` the results."""
    if not evidence:
        raise EvidenceError("no evidence to test the suspect with: give at least one kind")
    for item in evidence:
        if not isinstance(item, Evidence):
            raise EvidenceError(f"{type(item).__name__} is not evidence (it needs kind, needs, commitment() and test())")
    return combine([item.test(target, alpha=alpha) for item in evidence], alpha, suspect_seen=suspect_seen)
