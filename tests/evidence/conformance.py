"""``check_evidence``: what every kind of ownership evidence must do, as scikit-learn's ``check_estimator`` does for
estimators. A new kind passes it by adding one case builder to ``CASES`` in ``test_conformance.py``.

A *case* (:class:`Case`) gives a factory of the evidence (from a seed), a copy of the owner's model, an independent
model, and independent suspects to measure the false-positive rate over (independent digits models, random-answer
targets). Each kind then must:

* be an :class:`~tracemark.evidence.protocol.Evidence` (``kind``, ``needs``, ``commitment()``, ``test()``);
* commit before use: ``commitment()`` is present, a hex SHA-256, and the same on every call and for every instance
  made from the same seed; each result carries it;
* return a value: an :class:`~tracemark.evidence.protocol.EvidenceResult` whose ``to_dict()`` is strict JSON and whose
  ``__str__`` is not empty, with a p-value in [0, 1] and its null stated;
* have a valid null: an independent model is not called a copy and its p-value is at least ``alpha``; over the
  independent suspects, the share with p-value at most ``level`` stays within what a valid p-value allows
  (the 99.9% binomial quantile of ``level`` times their number), and none is called a copy;
* decide ``copy`` for the copy, with a p-value at most ``alpha``;
* be deterministic: a second instance from the same seed gives the same result on the same suspect (wall-clock
  ``seconds`` aside).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from scipy import stats

from tracemark.evidence import Commitment, Evidence, EvidenceResult
from tracemark.targets import Target

LABELS = ("copy", "no-evidence", "inconclusive")
NULL_KINDS = ("exact", "calibrated", "assumed")


@dataclass
class Case:
    """One kind's conformance inputs (see the module docstring)."""

    evidence_factory: Callable[[int], Evidence]
    copy_target: Target
    independent_target: Target
    null_targets: Sequence[Target] = ()
    alpha: float = 1e-9
    level: float = 0.05


@dataclass(frozen=True)
class Conformance:
    """What :func:`check_evidence` measured: the copy's and the independent model's p-values, and the independent
    suspects' p-values with how many were at most ``level``."""

    kind: str
    copy_p: float
    independent_p: float
    null_p: list[float] = field(default_factory=list)
    at_or_below_level: int = 0


def _without_seconds(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_without_seconds(v) for v in value]
    return value


def _check_result(result: Any, evidence: Evidence, alpha: float) -> EvidenceResult:
    assert isinstance(result, EvidenceResult), f"{evidence.kind}: test() returned {type(result).__name__}"
    assert result.kind == evidence.kind and result.decision in LABELS and result.null_kind in NULL_KINDS
    assert 0.0 <= result.p_value <= 1.0 and result.alpha == alpha and result.queries >= 0 and result.null
    assert result.commitment == evidence.commitment(), f"{evidence.kind}: the result carries another commitment"
    text = json.dumps(result.to_dict(), allow_nan=False, sort_keys=True)
    assert json.loads(text)["decision"] == result.decision
    assert str(result).strip() and result.kind in str(result)
    return result


def check_evidence(evidence_factory: Callable[[int], Evidence], copy_target: Target, independent_target: Target, *,
                   null_targets: Sequence[Target] = (), alpha: float = 1e-9, level: float = 0.05) -> Conformance:
    """Assert that the evidence ``evidence_factory(seed)`` makes conforms (see the module docstring)."""
    evidence = evidence_factory(0)
    assert isinstance(evidence, Evidence), f"{type(evidence).__name__} does not implement the Evidence protocol"
    assert isinstance(evidence.kind, str) and evidence.kind
    assert isinstance(evidence.needs, tuple) and evidence.needs and all(isinstance(n, str) for n in evidence.needs)

    commitment = evidence.commitment()
    assert isinstance(commitment, Commitment), f"{evidence.kind}: no commitment"
    assert re.fullmatch(r"[0-9a-f]{64}", commitment.digest), f"{evidence.kind}: the digest is not a hex SHA-256"
    assert evidence.commitment() == commitment and evidence_factory(0).commitment() == commitment
    json.dumps(commitment.to_dict(), allow_nan=False)

    copied = _check_result(evidence.test(copy_target, alpha=alpha), evidence, alpha)
    assert copied.decision == "copy" and copied.p_value <= alpha, f"{evidence.kind}: the copy is not called a copy: {copied}"
    again = evidence_factory(0).test(copy_target, alpha=alpha)
    assert _without_seconds(again.to_dict()) == _without_seconds(copied.to_dict()), f"{evidence.kind}: not deterministic"

    independent = _check_result(evidence.test(independent_target, alpha=alpha), evidence, alpha)
    assert independent.decision != "copy" and independent.p_value >= alpha, \
        f"{evidence.kind}: an independent model looks like a copy: {independent}"

    null_p = []
    for target in null_targets:
        result = _check_result(evidence.test(target, alpha=alpha), evidence, alpha)
        assert result.decision != "copy", f"{evidence.kind}: an independent suspect is called a copy: {result}"
        null_p.append(result.p_value)
    low = sum(p <= level for p in null_p)
    if null_p:
        allowed = stats.binom.ppf(0.999, len(null_p), level)
        assert low <= allowed, \
            f"{evidence.kind}: {low} of {len(null_p)} independent suspects have p <= {level} ({allowed:g} allowed)"
    return Conformance(evidence.kind, copied.p_value, independent.p_value, null_p, int(low))
