"""Ownership evidence behind one protocol, and one combined verdict over every kind.

See docs/guide/verification.md ("Combining evidence"). In short::

    evidence = [TriggerEvidence(key), WeightEvidence(scheme, customers, base), ResponseEvidence(store)]
    verdict = verify_all(target, evidence, alpha=1e-9)      # Holm over the kinds: family-wise error <= alpha

Names are imported on first use.
"""

from __future__ import annotations

from tracemark._util.lazy import lazy_exports
from tracemark.evidence.combine import combine  # noqa: F401  (the function, not its module of the same name)

_EXPORTS: dict[str, str] = {
    "Commitment": "tracemark.evidence.protocol",
    "Evidence": "tracemark.evidence.protocol",
    "EvidenceResult": "tracemark.evidence.protocol",
    "CombinedVerdict": "tracemark.evidence.combine",
    "Component": "tracemark.evidence.combine",
    "holm": "tracemark.evidence.combine",
    "verify_all": "tracemark.evidence.combine",
    "ledger_commitment": "tracemark.evidence.commitments",
    "EvidenceError": "tracemark.evidence.errors",
    "ResponseEvidence": "tracemark.evidence.kinds",
    "TraceEvidence": "tracemark.evidence.kinds",
    "TriggerEvidence": "tracemark.evidence.kinds",
    "WeightEvidence": "tracemark.evidence.kinds",
}

__all__ = sorted([*_EXPORTS, "combine"])


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
