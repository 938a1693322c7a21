"""Tracing: ask a suspect the shared queries and score every customer's code at once.

For customer ``i`` the statistic is the number of queries answered with ``i``'s label, out of
the queries the suspect answered with some class other than the image's own (an answer equal
to the image's class can match no customer). A suspect that does not carry ``i``'s code
matches each of those with probability exactly ``1/(K-1)``, independently, whatever else it
is (an independent model, another customer's copy, the base): the p-value is a binomial tail,
and multiplying it by the number of customers (Bonferroni) keeps the chance of accusing any
innocent customer at most ``alpha``.

Given the base model's weights and a suspect model file, :func:`trace` also runs the weight
test (:mod:`tracemark.fingerprint.weights`, after aligning the suspect's hidden units to the
base's); each test then gets ``alpha / 2`` (Bonferroni over the two) and a customer named by
either is accused.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from scipy import stats
from torch import nn

from tracemark.fingerprint.codes import FingerprintScheme
from tracemark.fingerprint.weights import WeightTrace, weight_trace
from tracemark.targets.base import Target, ask_labels
from tracemark.verification.verify import DEFAULT_ALPHA

TraceLabel = Literal["customer", "no-match", "inconclusive"]
SHOWN = 5
TRACE_EVENT = "trace"


@dataclass(frozen=True)
class CustomerScore:
    """One customer's score against a suspect.

    ``p_value`` is the binomial tail for this customer alone; ``p_adjusted`` multiplies it by
    the number of customers scored (capped at 1); ``log10_p`` stays finite where ``p_value``
    underflows to 0.
    """

    customer: str
    matches: int
    informative: int
    p_value: float
    p_adjusted: float
    log10_p: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TraceResult:
    """What tracing found.

    ``verdict`` is ``customer`` when at least one customer's adjusted p-value is at most
    ``alpha`` (``accused`` lists all of them, best first: colluders may all be named),
    ``inconclusive`` when unanswered queries could have changed that, else ``no-match``.
    ``margin_log10`` is log10 of the runner-up's p-value over the best one's. ``best``,
    ``runner_up``, ``top`` and ``informative`` are the black-box test's; ``weights`` is the
    weight test's outcome when it was asked for (then each test had ``alpha / 2``, and
    ``accused`` holds the customers either named: the black-box test's first).
    """

    verdict: TraceLabel
    accused: list[str]
    best: CustomerScore | None
    runner_up: CustomerScore | None
    top: list[CustomerScore]
    alpha: float
    n_customers: int
    queries: int
    answered: int
    informative: int
    null_rate: float
    key_commitment: str
    target: str
    answers: list[int] = field(repr=False, default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""
    weights: WeightTrace | None = None

    @property
    def customer(self) -> str | None:
        """The customer named (the best-scoring accused one), or ``None``."""
        return self.accused[0] if self.accused else None

    @property
    def margin_log10(self) -> float | None:
        if self.best is None or self.runner_up is None:
            return None
        return self.runner_up.log10_p - self.best.log10_p

    def to_dict(self) -> dict:
        data = asdict(self)
        data["customer"] = self.customer
        data["margin_log10"] = self.margin_log10
        data["weights"] = None if self.weights is None else self.weights.to_dict()
        return data

    def __str__(self) -> str:
        head = {"customer": f"CUSTOMER {self.customer}", "no-match": "NO CUSTOMER MATCHES",
                "inconclusive": "INCONCLUSIVE"}[self.verdict]
        lines = [f"trace: {head}  (target: {self.target})"]
        if len(self.accused) > 1:
            lines.append(f"  accused: {', '.join(self.accused)} (all clear alpha: possible collusion)")
        lines.append(f"  queries: {self.queries} asked, {self.answered} answered, {self.informative} answered with a "
                     f"class other than the image's own; null rate {self.null_rate:.4g}")
        split = "" if self.weights is None else ", split evenly between the black-box and the weight test"
        lines.append(f"  {self.n_customers} customers scored; alpha {self.alpha:.0e} over all of them (Bonferroni{split})")
        for rank, s in enumerate(self.top, 1):
            lines.append(f"  {rank}. {s.customer}: {s.matches} of {s.informative} matches, p = {s.p_value:.3g}, "
                         f"adjusted {s.p_adjusted:.3g}")
        if self.margin_log10 is not None:
            lines.append(f"  margin to runner-up: {self.margin_log10:.1f} orders of magnitude")
        if self.weights is not None:
            lines += self.weights.lines()
        lines.append(f"  key: {self.key_commitment[:16]}…")
        if self.errors:
            lines.append(f"  failed queries: {len(self.errors)} (first: {self.errors[0]})")
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)


def score_answers(scheme: FingerprintScheme, customers: Sequence[str], answers: np.ndarray,
                  labels: np.ndarray | None = None) -> list[CustomerScore]:
    """Score every customer against the answers to the first ``len(answers)`` queries (-1 = unanswered).

    ``labels`` is the customers × queries label matrix if already computed (see
    :meth:`FingerprintScheme.label_matrix`). Vectorised: 1,000 customers take milliseconds.
    """
    q = scheme.queries
    n = len(answers)
    if labels is None:
        labels = scheme.label_matrix(list(customers), q.drawing_ids[:n], q.true_labels[:n])
    informative_mask = (answers >= 0) & (answers != q.true_labels[:n])
    informative = int(informative_mask.sum())
    matches = (labels[:, informative_mask] == answers[informative_mask][None, :]).sum(axis=1)
    rate = scheme.null_rate
    if informative:
        log_p = stats.binom.logsf(matches - 1, informative, rate)
    else:
        log_p = np.zeros(len(customers))
    log_p = np.minimum(log_p, 0.0)
    n_customers = len(customers)
    p = np.exp(log_p)
    p_adj = np.minimum(1.0, p * n_customers)
    return [CustomerScore(c, int(m), informative, float(pv), float(pa), float(lp / math.log(10)))
            for c, m, pv, pa, lp in zip(customers, matches, p, p_adj, log_p)]


def trace(
    scheme: FingerprintScheme,
    customers: Sequence[str],
    target: Target,
    *,
    alpha: float = DEFAULT_ALPHA,
    max_queries: int | None = None,
    batch_size: int = 100,
    base: nn.Module | None = None,
    align: bool = True,
) -> TraceResult:
    """Ask ``target`` the tracing queries and name the customer whose code it carries, if any.

    ``customers`` are all the customer ids to score (the registry's). Queries up to
    ``max_queries`` (default all ``D*K``, 100 for ten classes) in batches; a failed batch
    is recorded and left out, and if that could change the outcome the verdict is
    ``inconclusive``. With ``base`` (the model the copies were made from) the suspect's
    weights are also scored, if ``target`` is a local torch model of the base's
    architecture (else the weight test reports that it does not apply); each test then
    gets ``alpha / 2``. ``align`` (default) first aligns the suspect's hidden units to the base's
    (:mod:`tracemark.fingerprint.align`; the weight test's ``alignment`` says what moved);
    ``align=False`` compares the weights as they are.
    """
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    if not customers:
        raise ValueError("no customers to score")
    scheme.key.check_compatible(target.input_shape, target.num_classes)
    start = time.perf_counter()
    q = scheme.queries
    n = len(q) if max_queries is None else min(int(max_queries), len(q))
    if n < 1:
        raise ValueError("max_queries must be at least 1")
    answers, errors, last_error = ask_labels(target, q.inputs[:n], batch_size)
    if not np.any(answers >= 0) and last_error is not None:
        raise last_error
    scheme.key.check_compatible(None, target.num_classes)
    labels = scheme.label_matrix(list(customers), q.drawing_ids[:n], q.true_labels[:n])
    scores = score_answers(scheme, customers, answers, labels)
    test_alpha = alpha if base is None else alpha / 2  # Bonferroni over the two tests
    weights = None if base is None else weight_trace(scheme, customers, getattr(target, "module", None), base,
                                                     alpha=test_alpha, align=align)
    order = sorted(range(len(scores)), key=lambda i: (scores[i].log10_p, -scores[i].matches, scores[i].customer))
    ranked = [scores[i] for i in order]
    threshold = math.log10(test_alpha / len(customers))
    accused = [s.customer for s in ranked if s.log10_p <= threshold]
    answered = int(np.sum(answers >= 0))
    unanswered = n - answered
    if weights is not None:
        accused += [c for c in weights.accused if c not in accused]
    note = ""
    if accused:
        label: TraceLabel = "customer"
    else:
        label = "no-match"
        if unanswered:
            # best case for the leading customer: every unanswered query informative and matching
            best = ranked[0]
            best_case = stats.binom.logsf(best.matches + unanswered - 1, best.informative + unanswered, scheme.null_rate)
            if best_case / math.log(10) <= threshold:
                label = "inconclusive"
                note = f"{unanswered} queries went unanswered; had they matched {best.customer}, it would be named"
    return TraceResult(
        verdict=label, accused=accused, best=ranked[0], runner_up=ranked[1] if len(ranked) > 1 else None,
        top=ranked[:SHOWN], alpha=alpha, n_customers=len(customers), queries=n, answered=answered,
        informative=ranked[0].informative, null_rate=scheme.null_rate, key_commitment=scheme.key.commitment(),
        target=str(target), answers=answers.tolist(), errors=errors, seconds=time.perf_counter() - start, note=note,
        weights=weights,
    )


def record_trace(ledger: Any, result: TraceResult, transcript: bytes | str | os.PathLike[str] | None = None) -> Any:
    """Append a ``trace`` entry to a ledger; the full result (and transcript, if any) are attached by hash."""
    from tracemark._util.canonical import canonical_json

    doc = result.to_dict()
    payload: dict[str, Any] = {k: doc[k] for k in ("verdict", "customer", "alpha", "n_customers", "queries",
                                                    "answered", "informative", "key_commitment", "target")}
    payload["accused"] = list(result.accused)
    payload["p_adjusted"] = None if result.best is None else result.best.p_adjusted
    payload["log10_p"] = None if result.best is None else result.best.log10_p
    if result.weights is not None:
        w = result.weights
        payload["weight_test"] = {"applies": w.applies, "accused": list(w.accused), "compared": w.compared,
                                  "log10_p": None if w.best is None else w.best.log10_p, "note": w.note,
                                  "alignment": None if w.alignment is None else w.alignment.method,
                                  "units_moved": None if w.alignment is None else w.alignment.moved}
    payload["result_sha256"] = ledger.attach(canonical_json(doc))
    if transcript is not None:
        data = transcript if isinstance(transcript, bytes) else Path(transcript).read_bytes()
        payload["transcript_sha256"] = ledger.attach(data)
    return ledger.append(TRACE_EVENT, payload)
