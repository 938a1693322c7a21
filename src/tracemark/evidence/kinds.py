"""The kinds of evidence tracemark has, each behind the one protocol (:mod:`tracemark.evidence.protocol`).

* :class:`TriggerEvidence` — the watermark key's triggers (:func:`tracemark.verification.verify`);
* :class:`TraceEvidence` — the customer codes' black-box queries (:func:`tracemark.fingerprint.trace`);
* :class:`WeightEvidence` — the customer weight code, read from a local torch model against the base
  (:func:`tracemark.fingerprint.weights.weight_trace`);
* :class:`ResponseEvidence` — the marked answers of ``tracemark serve --marking``
  (:func:`tracemark.extraction.clones.check_clone`).

Each ``test`` runs the existing check unchanged and turns its result into an
:class:`~tracemark.evidence.protocol.EvidenceResult` whose ``details`` hold the original result's ``to_dict()``.
A kind that cannot ask this suspect (the weights of a remote API) answers ``inconclusive`` and says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tracemark.evidence.commitments import digest_of, ledger_commitment
from tracemark.evidence.protocol import Commitment, EvidenceLabel, EvidenceResult, NullKind

if TYPE_CHECKING:
    from torch import nn

    from tracemark.extraction.store import MarkedSet, ResponseStore
    from tracemark.fingerprint.codes import FingerprintScheme
    from tracemark.keys.key import WatermarkKey
    from tracemark.ledger.store import Ledger
    from tracemark.targets.base import Target
    from tracemark.verification.verdict import Verdict

_NULL_KINDS: dict[str, NullKind] = {"keyed": "exact", "empirical": "calibrated", "control": "calibrated", "assumed": "assumed"}
_TRACE_DECISIONS: dict[str, EvidenceLabel] = {"customer": "copy", "no-match": "no-evidence", "inconclusive": "inconclusive"}


@dataclass
class TriggerEvidence:
    """The watermark key's triggers: ``copy`` when the suspect gives enough of their secret labels.

    The null is exact for keyed-label keys (each trigger's label drawn uniformly from the classes other than the
    image's own); ``references`` (independent models) add an empirical bound and the most cautious one is used
    (see :mod:`tracemark.verification.null`). Commits to the key's commitment; with a ``ledger``, at the time of its
    ``key-created`` entry.
    """

    key: WatermarkKey
    ledger: Ledger | None = None
    max_queries: int | None = None
    references: Sequence[Target] = ()
    batch_size: int = 100
    kind: str = field(default="trigger", init=False)
    needs: tuple[str, ...] = field(default=("labels",), init=False)

    def commitment(self) -> Commitment:
        """The key's commitment (hex SHA-256 of its canonical bytes) and when the ledger says it was made."""
        from tracemark.ledger.events import KEY_CREATED

        commitment = self.key.commitment()
        return ledger_commitment(self.ledger, commitment, KEY_CREATED, "key_commitment", [commitment])

    def test(self, target: Target, *, alpha: float) -> EvidenceResult:
        """Ask ``target`` the triggers (:func:`~tracemark.verification.verify`) and score them."""
        from tracemark.verification.verify import verify

        verdict = verify(self.key, target, alpha=alpha, max_queries=self.max_queries, references=list(self.references),
                         batch_size=self.batch_size)
        return trigger_result(verdict, self.commitment())


def trigger_result(verdict: Verdict, commitment: Commitment | None = None) -> EvidenceResult:
    """A trigger :class:`~tracemark.verification.Verdict` as the trigger kind's :class:`EvidenceResult`."""
    null = verdict.null
    why = null.get("details", {}).get("reason", "")
    summary = f"{verdict.matches} of {verdict.answered} triggers answered with the key's label"
    return EvidenceResult(
        kind="trigger", decision=verdict.verdict, p_value=verdict.p_value, alpha=verdict.alpha,
        null_kind=_NULL_KINDS[null["source"]],
        null=f"{null['source']} rate {null['rate']:.4g}" + (f": {why}" if why else "") + "; binomial tail",
        queries=verdict.inputs_sent, target=verdict.target, commitment=commitment,
        summary=summary + (f"; {verdict.note}" if verdict.note else ""), details=verdict.to_dict())


def _codes_digest(scheme: FingerprintScheme, customers: Sequence[str], purpose: str) -> str:
    return digest_of({"purpose": purpose, "key_commitment": scheme.key.commitment(), "n_drawings": scheme.n_drawings,
                      "codes": sorted(scheme.code_commitment(c) for c in customers)})


def _codes_commitment(scheme: FingerprintScheme, customers: Sequence[str], ledger: Ledger | None, purpose: str) -> Commitment:
    from tracemark.fingerprint.registry import CODE_CREATED

    codes = [scheme.code_commitment(c) for c in customers]
    return ledger_commitment(ledger, _codes_digest(scheme, customers, purpose), CODE_CREATED, "code_commitment", codes)


@dataclass
class TraceEvidence:
    """The customer codes' black-box test: ``copy`` when the suspect carries one registered customer's code.

    Exact null: a suspect without customer ``c``'s code answers each informative query with ``c``'s label with
    probability exactly 1/(K−1); Bonferroni over the customers. Commits to every customer's code commitment; with a
    ``ledger``, at the time of the last ``customer-code-created`` entry among them.
    """

    scheme: FingerprintScheme
    customers: Sequence[str]
    ledger: Ledger | None = None
    max_queries: int | None = None
    batch_size: int = 100
    kind: str = field(default="customer-code", init=False)
    needs: tuple[str, ...] = field(default=("labels",), init=False)

    def commitment(self) -> Commitment:
        """A digest over the customers' code commitments (and the key's), with the ledger's time for them."""
        return _codes_commitment(self.scheme, self.customers, self.ledger, "fingerprint/black-box")

    def test(self, target: Target, *, alpha: float) -> EvidenceResult:
        """Ask ``target`` the tracing queries (:func:`~tracemark.fingerprint.trace`, without the weight test)."""
        from tracemark.fingerprint.trace import trace

        result = trace(self.scheme, list(self.customers), target, alpha=alpha, max_queries=self.max_queries,
                       batch_size=self.batch_size)
        best = result.best
        summary = (f"best customer {best.customer}: {best.matches} of {best.informative} informative queries match, "
                   f"log10 p {best.log10_p:.1f}" if best is not None else "no customer scored")
        if result.customer is not None:
            summary = f"customer {result.customer}'s code; " + summary
        return EvidenceResult(
            kind=self.kind, decision=_TRACE_DECISIONS[result.verdict], p_value=best.p_adjusted if best else 1.0,
            alpha=alpha, null_kind="exact",
            null=(f"a suspect without a customer's code matches its label with probability exactly {result.null_rate:.4g} "
                  f"per informative query; binomial tail, Bonferroni over {result.n_customers} customers"),
            queries=result.queries, target=result.target, commitment=self.commitment(),
            summary=summary + (f"; {result.note}" if result.note else ""), details=result.to_dict())


@dataclass
class WeightEvidence:
    """The customer weight code: ``copy`` when a local model's weights, compared with the ``base``, carry one
    registered customer's sign pattern.

    Exact null: for a model not derived from customer ``c``'s copy, ``c``'s keyed signs agree with the sign of each
    changed weight with probability exactly 1/2; Bonferroni over the customers. Needs the suspect's weights (a local
    torch model of the base's architecture): for any other suspect it answers ``inconclusive``.
    """

    scheme: FingerprintScheme
    customers: Sequence[str]
    base: nn.Module
    ledger: Ledger | None = None
    align: bool = True
    kind: str = field(default="weights", init=False)
    needs: tuple[str, ...] = field(default=("weights",), init=False)

    def commitment(self) -> Commitment:
        """A digest over the customers' code commitments (the signs derive from them), with the ledger's time."""
        from tracemark.fingerprint.weights import SIGN_PURPOSE

        return _codes_commitment(self.scheme, self.customers, self.ledger, SIGN_PURPOSE)

    def test(self, target: Target, *, alpha: float) -> EvidenceResult:
        """Read ``target``'s weights (no queries) and score every customer's code against the base."""
        from tracemark.fingerprint.weights import weight_trace

        result = weight_trace(self.scheme, list(self.customers), getattr(target, "module", None), self.base,
                              alpha=alpha, align=self.align)
        null = ("a model not derived from a customer's copy agrees with its keyed sign on each changed weight with "
                f"probability exactly 1/2; binomial tail, Bonferroni over {result.n_customers} customers")
        if not result.applies:
            return EvidenceResult(self.kind, "inconclusive", 1.0, alpha, "exact", null, 0, str(target), self.commitment(),
                                  f"cannot ask this suspect: {result.note}", result.to_dict())
        best = result.best
        log10_p = 0.0 if best is None else best.log10_p_adjusted
        decision: EvidenceLabel = "copy" if result.accused else "no-evidence"
        summary = (f"{best.agreements} of {best.compared} changed weights agree with {best.customer}'s signs, "
                   f"adjusted log10 p {log10_p:.1f}" if best is not None else "no customer scored")
        if result.customer is not None:
            summary = f"customer {result.customer}'s weight code; " + summary
        return EvidenceResult(self.kind, decision, 10.0 ** log10_p, alpha, "exact", null,
                              0, str(target), self.commitment(), summary + (f"; {result.note}" if result.note else ""),
                              result.to_dict())


@dataclass
class ResponseEvidence:
    """The marked answers of ``tracemark serve --marking``: ``copy`` when the suspect learned one client's (or one
    coalition's) marked answers.

    Exact null: each marked input's served label was HMAC-drawn uniformly among the K−1 classes other than the
    model's, independently of a suspect that never learned from it (rank test on scores, label test on labels;
    :mod:`tracemark.extraction.clones`). Single clients (Bonferroni) and coalitions (every set searched counted) are
    two families; each is run at ``alpha / 2`` and the p-value is twice the smaller, so the kind's p-value is valid
    for both together. Commits to the marked inputs and served labels as the server recorded them.
    """

    source: ResponseStore | Sequence[MarkedSet]
    clients: Sequence[str] | None = None
    kind: str = field(default="responses", init=False)
    needs: tuple[str, ...] = field(default=("labels",), init=False)

    def _sets(self) -> list[MarkedSet]:
        from tracemark.extraction.store import ResponseStore

        if isinstance(self.source, ResponseStore):
            ids = self.clients if self.clients is not None else [c.client_id for c in self.source.clients() if c.marked]
            return [self.source.marked(cid) for cid in ids]
        return [s for s in self.source if self.clients is None or s.client_id in self.clients]

    def commitment(self) -> Commitment:
        """A digest over every client's marked inputs (their keys) and served labels; their time is the store's own."""
        from tracemark.extraction.marking import input_key

        sets = [{"client": s.client_id, "marks": sorted([input_key(x), int(w)] for x, w in zip(s.inputs, s.served_labels))}
                for s in self._sets() if len(s)]
        return Commitment(digest_of({"purpose": "extraction/marked-responses", "sets": sorted(sets, key=lambda d: d["client"])}),
                          None, "the marked answers as the server recorded them; no ledger entry vouches for their time "
                                "(`tracemark responses export --record` commits an export)")

    def test(self, target: Target, *, alpha: float) -> EvidenceResult:
        """Ask ``target`` every client's marked inputs (:func:`~tracemark.extraction.clones.check_clone`)."""
        from tracemark.extraction.clones import check_clone

        sets = self._sets()
        result = check_clone(sets, target, alpha=alpha / 2)
        candidates = [result.clients[0].p_adjusted] + ([result.coalition.p_adjusted] if result.coalition is not None else [])
        p = min(1.0, 2 * min(candidates))
        decision: EvidenceLabel = "no-evidence" if result.outcome == "no-client-matches" else "copy"
        if result.named_clients:
            summary = "learned from client " + ", ".join(c.client_name for c in result.named_clients)
        elif result.outcome == "clone-of-coalition" and result.coalition is not None:
            summary = "learned from the coalition " + ", ".join(m.client_name for m in result.coalition.members)
        else:
            summary = "no client's marked answers learned"
        best = result.clients[0]  # check_clone refuses a store without marked answers
        summary += f"; best client {best.client_name}: {best.statistic} test, Bonferroni p {best.p_adjusted:.3g}"
        return EvidenceResult(
            kind=self.kind, decision=decision, p_value=p, alpha=alpha, null_kind="exact",
            null=(f"served labels HMAC-drawn uniformly among the K-1 other classes; exact rank/label tests, Bonferroni over "
                  f"{len(result.clients)} clients and every coalition searched, times 2 for the two families"),
            queries=sum(len(s) for s in sets), target=result.suspect, commitment=self.commitment(), summary=summary,
            details=result.to_dict())
