"""``Verdict``: the result of checking one target for one key."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

VerdictLabel = Literal["copy", "no-evidence", "inconclusive"]


@dataclass(frozen=True)
class Verdict:
    """What verification found.

    ``verdict`` is ``copy`` when ``p_value <= alpha``; ``inconclusive`` when too few queries
    were answered to decide either way; ``no-evidence`` otherwise. ``answers`` holds each
    trigger's answer (-1 where the target did not answer). ``queries`` is the number of triggers
    asked; ``inputs_sent`` every input the target was given (the unstamped controls of a
    single-target key and, for a remote target, retries included): what a metered API bills.
    """

    verdict: VerdictLabel
    p_value: float
    matches: int
    answered: int
    queries: int
    alpha: float
    null: dict
    threshold: int | None
    key_commitment: str
    target: str
    answers: list[int] = field(repr=False, default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""
    inputs_sent: int = 0

    @property
    def is_copy(self) -> bool:
        return self.verdict == "copy"

    @property
    def match_rate(self) -> float:
        return self.matches / self.answered if self.answered else float("nan")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["match_rate"] = self.match_rate if self.answered else None
        return data

    def __str__(self) -> str:
        needed = f", {self.threshold} needed" if self.threshold is not None else ""
        lines = [
            f"verdict: {self.verdict.upper()}  (target: {self.target})",
            f"  matches: {self.matches} of {self.answered} answered ({self.queries} triggers asked{needed})",
            f"  inputs sent: {self.inputs_sent}" + (" (triggers, unstamped controls and retries: what a metered API counts)"
                                                   if self.inputs_sent != self.queries else ""),
            f"  p-value: {self.p_value:.3g} against alpha {self.alpha:.0e}",
            f"  null: {self.null['source']} rate {self.null['rate']:.4g}",
            f"  key: {self.key_commitment[:16]}…",
        ]
        if self.errors:
            lines.append(f"  failed queries: {len(self.errors)} (first: {self.errors[0]})")
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)
