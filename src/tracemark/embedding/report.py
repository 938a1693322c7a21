"""``EmbedReport``: what embedding a key cost and achieved."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class EmbedReport:
    """Clean accuracy before/after, trigger accuracy, and the compute spent.

    ``samples_seen`` counts forward/backward passes over single examples (clean and trigger),
    the unit used to compare embedding cost with training cost.
    """

    key_commitment: str
    method: str
    clean_accuracy_before: float | None
    clean_accuracy_after: float
    trigger_accuracy_before: float | None
    trigger_accuracy_after: float
    steps: int
    samples_seen: int
    seconds: float
    reached_goal: bool
    note: str = ""

    @property
    def clean_accuracy_change(self) -> float | None:
        """After minus before, in accuracy points (percentage points)."""
        if self.clean_accuracy_before is None:
            return None
        return 100.0 * (self.clean_accuracy_after - self.clean_accuracy_before)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["clean_accuracy_change_points"] = self.clean_accuracy_change
        return data

    def __str__(self) -> str:
        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{100 * v:.2f}%"

        change = self.clean_accuracy_change
        lines = [
            f"embedding ({self.method}) {'reached its goal' if self.reached_goal else 'DID NOT reach its goal'}",
            f"  clean accuracy: {pct(self.clean_accuracy_before)} -> {pct(self.clean_accuracy_after)}"
            + ("" if change is None else f" ({change:+.2f} points)"),
            f"  trigger accuracy: {pct(self.trigger_accuracy_before)} -> {pct(self.trigger_accuracy_after)}",
            f"  cost: {self.steps} steps, {self.samples_seen} samples, {self.seconds:.1f} s",
            f"  key: {self.key_commitment[:16]}…",
        ]
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)
