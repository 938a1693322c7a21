"""The one protocol every kind of ownership evidence answers.

Trigger marks, customer codes and the weight code, response marks and the lineage fingerprint all answer
one question: "does this suspect derive from our model, and how sure are we?". Each kind is an
:class:`Evidence`: it states what it needs, what it committed to before the suspect existed, and returns
an :class:`EvidenceResult` whose ``p_value`` is valid under the stated ``null``. ``combine`` in
:mod:`tracemark.evidence.combine` takes any list of results and controls the family-wise error rate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from tracemark.targets import Target

EvidenceLabel = Literal["copy", "no-evidence", "inconclusive"]
NullKind = Literal["exact", "calibrated", "assumed"]


@dataclass(frozen=True)
class Commitment:
    """What a kind of evidence fixed before use: the hash of its secret inputs and expected answers.

    ``digest`` is a hex SHA-256 over the canonical bytes the kind documents; ``committed_at`` the
    time the ledger (or a time-stamp) vouches for, ``None`` when nothing vouches for it yet;
    ``vouched_by`` says who (``"ledger entry 12, RFC 3161 token from <authority>"``).
    """

    digest: str
    committed_at: datetime | None = None
    vouched_by: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "committed_at": None if self.committed_at is None else self.committed_at.isoformat(),
                "vouched_by": self.vouched_by}


@dataclass(frozen=True)
class EvidenceResult:
    """One kind of evidence's answer for one suspect.

    ``decision`` is this component's own call at its own ``alpha`` (``inconclusive`` when it could not
    support alpha: too few answers, a calibration pool too small); ``combine`` re-decides at the
    family-wise level. ``null_kind`` is ``exact`` when the null distribution follows from the key
    alone, ``calibrated`` when it was estimated from independent reference models (or the suspect's
    own controls), ``assumed`` when it is a stated bound, not a measurement; ``null`` says which in words.
    ``queries`` counts the inputs the suspect was asked.
    """

    kind: str
    decision: EvidenceLabel
    p_value: float
    alpha: float
    null_kind: NullKind
    null: str
    queries: int
    target: str
    commitment: Commitment | None = None
    summary: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["commitment"] = None if self.commitment is None else self.commitment.to_dict()
        return data

    def __str__(self) -> str:
        line = f"{self.kind}: {self.decision.upper()}  p {self.p_value:.3g} (alpha {self.alpha:.0e}, {self.queries} queries)"
        return line + (f"\n  {self.summary}" if self.summary else "") + f"\n  null ({self.null_kind}): {self.null}"


@runtime_checkable
class Evidence(Protocol):
    """A kind of ownership evidence, ready to test suspects.

    ``kind`` names it (``"trigger"``, ``"weights"``, ``"responses"``, ``"lineage"``); ``needs`` lists what
    a suspect must offer (``"labels"``, ``"scores"``, ``"weights"``); ``commitment`` returns what was
    fixed before use (``None`` only for a kind that has no secret); ``test`` asks the suspect and scores it.
    """

    kind: str
    needs: tuple[str, ...]

    def commitment(self) -> Commitment | None: ...

    def test(self, target: Target, *, alpha: float) -> EvidenceResult: ...
