"""The lineage fingerprint as one kind of :class:`~tracemark.evidence.protocol.Evidence`.

``test`` asks the suspect every fingerprint input once (at most 300 queries), counts the answers equal to
the expected labels and scores them against the calibrated null (:mod:`tracemark.lineage.calibrate`).
The decision is ``copy`` when the p-value is at most alpha; ``inconclusive`` when the calibration pool cannot
support alpha, when unanswered queries could have changed the call, or when the commitment is not older than
the suspect (an accuser could craft transferable inputs against a model already seen: the False Claims attack);
else ``no-evidence``.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import numpy as np

from tracemark.errors import ClassCountMismatchError, ShapeMismatchError
from tracemark.evidence.protocol import Commitment, EvidenceResult
from tracemark.ledger.events import ENV_LEDGER
from tracemark.lineage.commit import committed
from tracemark.lineage.fileformat import Lineage, read_lineage
from tracemark.targets.base import Target, ask_labels

DEFAULT_ALPHA = 1e-9


class LineageEvidence:
    """A loaded lineage fingerprint, ready to test suspects; ``suspect_since``: when the suspect was first seen
    (the commitment must be older), if known."""

    kind = "lineage"
    needs: tuple[str, ...] = ("labels",)

    def __init__(self, lineage: Lineage, *, commitment: Commitment | None = None, suspect_since: datetime | None = None,
                 batch_size: int = 100, source: str = "lineage"):
        self.lineage = lineage
        self._commitment = commitment or Commitment(lineage.commitment())
        self.suspect_since = suspect_since
        self.batch_size = batch_size
        self.source = source

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, ledger: str | os.PathLike[str] | None = None,
             suspect_since: datetime | None = None) -> "LineageEvidence":
        """Read a lineage file (bounded and checked) and look its commitment up in ``ledger`` (default
        ``$TRACEMARK_LEDGER`` when set; without one the commitment has no vouched-for time)."""
        lineage = read_lineage(path)
        ledger = ledger or os.environ.get(ENV_LEDGER) or None
        commitment = committed(ledger, lineage.commitment()) if ledger else None
        return cls(lineage, commitment=commitment, suspect_since=suspect_since, source=str(Path(path)))

    def commitment(self) -> Commitment:
        """The SHA-256 of the inputs and expected labels, with the time the ledger vouches for (if looked up)."""
        return self._commitment

    def _predates(self) -> bool | None:
        at = self._commitment.committed_at
        if at is None or self.suspect_since is None:
            return None
        since = self.suspect_since if self.suspect_since.tzinfo else self.suspect_since.astimezone()
        return at < since

    def test(self, target: Target, *, alpha: float = DEFAULT_ALPHA) -> EvidenceResult:
        """Ask ``target`` the fingerprint inputs and decide at ``alpha``."""
        if not 0 < alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        lineage, cal = self.lineage, self.lineage.calibration
        if target.input_shape is not None and tuple(target.input_shape) != lineage.input_shape:
            raise ShapeMismatchError(f"{target} takes inputs of shape {tuple(target.input_shape)}; the lineage "
                                     f"fingerprint's are {lineage.input_shape}")
        if target.num_classes is not None and target.num_classes != lineage.num_classes:
            raise ClassCountMismatchError(f"{target} has {target.num_classes} classes; the lineage fingerprint {lineage.num_classes}")
        n = len(lineage.labels)
        answers, errors, last_error = ask_labels(target, lineage.images(), self.batch_size)
        answered = int(np.sum(answers >= 0))
        if answered == 0 and last_error is not None:
            raise last_error
        matches = int(np.sum(answers == lineage.labels))
        p_value = cal.p_value(matches)
        predates = self._predates()
        small = cal.too_small(alpha)
        if small is not None:
            decision, note = "inconclusive", small
        elif predates is False:
            decision = "inconclusive"
            note = (f"the commitment ({self._commitment.committed_at:%Y-%m-%d %H:%M:%S %Z}) is not older than the suspect "
                    f"({self.suspect_since:%Y-%m-%d %H:%M:%S}): inputs made after the suspect existed prove nothing")
        elif p_value <= alpha:
            decision, note = "copy", ""
        elif n - answered and cal.p_value(matches + n - answered) <= alpha:
            decision, note = "inconclusive", f"{n - answered} queries went unanswered; had they matched, the call would be copy"
        else:
            decision, note = "no-evidence", ""
        summary = (f"{matches} of {n} fingerprint inputs answered with the expected label "
                   f"(independent references: {cal.pooled_rate:.1%}, bound {cal.rate:.3g})") + (f"; {note}" if note else "")
        null = (f"binomial tail at the {cal.bound} Clopper-Pearson upper bound {cal.rate:.4g} (confidence "
                f"1-{1 - cal.confidence:.0e}) of {len(cal.agreements)} held-out independent references' agreement; "
                f"false-accusation rate <= {cal.error_rate(alpha):.2g}")
        return EvidenceResult(
            kind=self.kind, decision=decision, p_value=p_value, alpha=alpha, null_kind="calibrated", null=null,  # type: ignore[arg-type]
            queries=n, target=str(target), commitment=self._commitment, summary=summary,
            details={"matches": matches, "answered": answered, "inputs": n, "errors": errors, "lineage": self.source,
                     "null_rate": cal.rate, "supported_alpha": cal.supported_alpha(), "error_rate": cal.error_rate(alpha),
                     "commitment_predates_suspect": predates,
                     "suspect_since": None if self.suspect_since is None else self.suspect_since.isoformat()},
        )
