"""``SuiteResult``: every attack record of a run, its configuration, and the per-kind summary."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tracemark._util.files import atomic_write_text
from tracemark.attacks.base import KINDS
from tracemark.lab.protocol import AttackRecord

RESULT_FORMAT = "tracemark-robustness/1"


@dataclass(frozen=True)
class KindSummary:
    """The strongest attack of one kind and whether any attack of that kind removed the mark.

    "Strongest" is the attack within the accuracy budget whose verification p-value is highest
    (the weakest evidence left; ties broken by lower trigger accuracy); if no attack of the
    kind stays within budget, the one with the highest p-value overall, flagged
    ``within_budget=False``.
    """

    kind: str
    strongest: str
    thief_accuracy: float
    accuracy_drop_points: float
    p_value: float
    verdict: str
    within_budget: bool
    removed_by: list[str]

    @property
    def change_points(self) -> float:
        """Thief accuracy minus marked accuracy, in points."""
        return 0.0 - self.accuracy_drop_points

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SuiteResult:
    """A robustness run: configuration, marked-model figures, records, versions and wall time."""

    suite: str
    dataset: str
    marked_accuracy: float
    marked_trigger_accuracy: float
    alpha: float
    budget_points: float
    config: dict
    records: list[AttackRecord]
    versions: dict = field(default_factory=dict)
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def summary(self) -> list[KindSummary]:
        """One :class:`KindSummary` per attack kind present, in the order of :data:`KINDS`."""
        out = []
        for kind in KINDS:
            recs = [r for r in self.records if r.kind == kind and r.error is None]
            if not recs:
                continue
            within = [r for r in recs if r.within_budget]
            pool = within or recs
            # p-values underflow to 0 for strong evidence: then the lower trigger accuracy is the stronger attack
            best = max(pool, key=lambda r: (r.p_value, -r.trigger_accuracy, -r.accuracy_drop_points))
            out.append(KindSummary(kind, best.attack, best.thief_accuracy, best.accuracy_drop_points, best.p_value,
                                   best.verdict, best.within_budget, [r.attack for r in recs if r.removed]))
        return out

    @property
    def removed_by(self) -> list[AttackRecord]:
        """Records of attacks that removed the mark within budget."""
        return [r for r in self.records if r.removed]

    @property
    def survived(self) -> bool:
        """True when no attack in the run removed the mark within budget (and none failed)."""
        return not self.removed_by and not self.failed

    @property
    def combined(self) -> bool:
        """True when the run tested other kinds of evidence beside the trigger mark and combined them."""
        return any(r.combined_verdict is not None for r in self.records)

    @property
    def removed_all_by(self) -> list[AttackRecord]:
        """Records of attacks that removed every kind of evidence within budget (the combined verdict not ``copy``)."""
        return [r for r in self.records if r.removed_all]

    @property
    def failed(self) -> list[AttackRecord]:
        """Records of attacks that raised an error."""
        return [r for r in self.records if r.error is not None]

    def to_dict(self) -> dict:
        return {
            "format": RESULT_FORMAT,
            "suite": self.suite,
            "dataset": self.dataset,
            "marked_accuracy": self.marked_accuracy,
            "marked_trigger_accuracy": self.marked_trigger_accuracy,
            "alpha": self.alpha,
            "budget_points": self.budget_points,
            "config": self.config,
            "versions": self.versions,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "survived": self.survived,
            "summary": [s.to_dict() for s in self.summary()],
            "records": [r.to_dict() for r in self.records],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "SuiteResult":
        return cls(data["suite"], data["dataset"], data["marked_accuracy"], data["marked_trigger_accuracy"],
                   data["alpha"], data["budget_points"], data["config"],
                   [AttackRecord.from_dict(r) for r in data["records"]], data.get("versions", {}), data.get("seconds", 0.0),
                   data.get("cpu_seconds", 0.0))

    def save_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON (NaN written as null)."""
        return atomic_write_text(path, json.dumps(_nan_to_none(self.to_dict()), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load_json(cls, path: str | Path) -> "SuiteResult":
        """Read a result written by :meth:`save_json`."""
        return cls.from_dict(_none_to_nan(json.loads(Path(path).read_text())))

    def __str__(self) -> str:
        lines = [
            f"robustness suite '{self.suite}' on {self.dataset}: marked model {100 * self.marked_accuracy:.2f}% clean, "
            f"{100 * self.marked_trigger_accuracy:.0f}% triggers; budget {self.budget_points:g} points, alpha {self.alpha:.0e}",
            f"{'kind':<10} {'strongest attack':<48} {'budget':<7} {'thief acc':>9} {'Δ pts':>7} {'p-value':>9}  removed by",
        ]
        for s in self.summary():
            lines.append(f"{s.kind:<10} {s.strongest[:48]:<48} {'within' if s.within_budget else 'beyond':<7} "
                         f"{100 * s.thief_accuracy:>8.2f}% {s.change_points:>+7.2f} "
                         f"{s.p_value:>9.2g}  {', '.join(s.removed_by) or '-'}")
        verdict = "SURVIVED every attack" if self.survived else f"REMOVED by {len(self.removed_by)} of {len(self.records)} attacks"
        if self.failed:
            verdict += f"; {len(self.failed)} attack(s) failed to run"
        lines.append(f"mark {verdict} ({self.seconds:.0f} s wall, {self.cpu_seconds:.0f} s CPU)")
        if self.combined:
            kinds = ", ".join(dict.fromkeys(k for r in self.records for k in r.evidence))
            lines.append(f"evidence combined ({kinds}; family-wise alpha {self.alpha:.0e}): "
                         + (f"REMOVED by {len(self.removed_all_by)} of {len(self.records)} attacks"
                            if self.removed_all_by else "SURVIVED every attack"))
            for r in self.records:
                if r.error is None:
                    lines.append(f"  {r.attack[:48]:<48} {'within' if r.within_budget else 'beyond':<7} "
                                 f"{r.combined_verdict:<12} survived by: {', '.join(r.survived_by) or 'none'}")
        return "\n".join(lines)


def _nan_to_none(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


_FLOAT_FIELDS = ("thief_accuracy", "accuracy_drop_points", "trigger_accuracy", "p_value")


def _none_to_nan(data: dict) -> dict:
    for record in data.get("records", []):
        for name in _FLOAT_FIELDS:
            if record.get(name) is None:
                record[name] = float("nan")
    return data
