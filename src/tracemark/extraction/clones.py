"""Which client did a clone learn from? Ask the suspect each client's marked inputs and count agreements.

The tests are exact, with no calibration. A client's wrong label ``w`` for a marked input is drawn by an
HMAC under that client's secret, uniformly among the K−1 classes other than the model's own label ``v``.
A suspect that never learned from that client's answers — an independent model, or a clone of another
client — answers without knowing ``w``, so:

* **runner-up test** (when the suspect gives scores: a local model, or an API returning probabilities):
  the class the suspect ranks highest among those other than ``v`` is ``w`` with probability exactly
  1/(K−1), independently across marked inputs; the count over all marked inputs is at most
  Binomial(n, 1/(K−1)). A clone that half-learned a marked answer ranks ``w`` just behind ``v``, so this
  catches marks that did not flip the clone's label.
* **label test** (labels only): ``P(s = w) = 1/(K−1)`` when the suspect's label ``s ≠ v`` and 0 when
  ``s = v``, so the number of agreements is at most Binomial(d, 1/(K−1)), ``d`` counting the marked
  inputs the suspect answers off ``v``. Conditioning on ``d`` is much stronger than DAWN's unconditional
  test: an accurate clone agrees with ``v`` on the marks it did not memorise, and they cost nothing.

The runner-up test is used whenever the suspect gives scores (it counts every label-test agreement too),
the label test otherwise; the choice depends only on what the suspect returns. Every client is tested;
p-values are Bonferroni-adjusted over the number of clients tested, and the best client is named only
when its adjusted p-value is at most ``alpha``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from tracemark._progress import progress_bar
from tracemark.extraction.errors import NoMarkedResponsesError
from tracemark.extraction.store import MarkedSet, ResponseStore
from tracemark.targets.base import Answers, Target
from tracemark.verification.stats import binomial_pvalue, log10_or_floor

DEFAULT_ALPHA = 1e-6
"""Default significance level for naming a client (after the Bonferroni adjustment)."""
QUERY_CHUNK = 256

Outcome = Literal["clone-of-client", "no-client-matches"]
Statistic = Literal["runner-up", "label"]


@dataclass(frozen=True)
class ClientEvidence:
    """One client's test: marked inputs asked, the statistic used, its count of agreements out of ``trials``,
    and (always) the label agreements and how many answers were off the model's label."""

    client_id: str
    client_name: str
    marked: int
    statistic: Statistic
    matches: int
    trials: int
    label_matches: int
    disagreed: int
    null_rate: float
    p_value: float
    p_adjusted: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def __str__(self) -> str:
        return (f"{self.client_name} ({self.client_id}): {self.statistic} test {self.matches}/{self.trials} "
                f"(null {self.null_rate:.3g}; {self.label_matches} of {self.marked} marked labels reproduced, "
                f"{self.disagreed} answered off the model's label), p = {self.p_value:.3g}, Bonferroni {self.p_adjusted:.3g}")


@dataclass(frozen=True)
class CloneCheck:
    """The outcome for one suspect: every client's evidence (best first), the client named, and the margin."""

    suspect: str
    alpha: float
    outcome: Outcome
    clients: list[ClientEvidence] = field(default_factory=list)

    @property
    def named(self) -> ClientEvidence | None:
        """The client the suspect learned from, or ``None``."""
        return self.clients[0] if self.outcome == "clone-of-client" else None

    @property
    def margin(self) -> float | None:
        """Orders of magnitude (log10) between the best and the second-best adjusted p-value; ``None`` with one client."""
        if len(self.clients) < 2:
            return None
        return log10_or_floor(self.clients[1].p_adjusted) - log10_or_floor(self.clients[0].p_adjusted)

    def to_dict(self) -> dict:
        named = self.named
        return {"suspect": self.suspect, "alpha": self.alpha, "outcome": self.outcome,
                "named": named.to_dict() if named else None, "margin_log10": self.margin,
                "clients": [c.to_dict() for c in self.clients]}

    def __str__(self) -> str:
        lines = [f"suspect: {self.suspect}"]
        named = self.named
        if named is None:
            lines.append(f"no client matches (best Bonferroni-adjusted p-value above alpha = {self.alpha:g})")
        else:
            margin = f"; next client {self.margin:.1f} orders of magnitude behind" if self.margin is not None else ""
            lines.append(f"learned from client {named.client_name} (p = {named.p_adjusted:.3g} after Bonferroni over "
                         f"{len(self.clients)} clients{margin})")
        lines += [f"  {c}" for c in self.clients]
        return "\n".join(lines)


def _answers(target: Target, x: np.ndarray, advance: Callable[[int], None]) -> Answers:
    labels, scores = [], []
    for start in range(0, len(x), QUERY_CHUNK):
        answers = target.predict(x[start : start + QUERY_CHUNK])
        labels.append(answers.labels)
        scores.append(answers.probabilities)
        advance(min(QUERY_CHUNK, len(x) - start))
    joined = np.concatenate(scores) if all(p is not None for p in scores) else None
    return Answers(np.concatenate(labels), joined)


def runner_up(scores: np.ndarray, model_labels: np.ndarray) -> np.ndarray:
    """For each row, the highest-scoring class other than the model's own label (ties: lowest index)."""
    masked = np.array(scores, dtype=np.float64, copy=True)
    masked[np.arange(len(masked)), model_labels] = -np.inf
    return masked.argmax(axis=1)


def evidence(marked: MarkedSet, suspect: Answers, tested: int) -> ClientEvidence:
    """The exact test of one client's marked set against the suspect's answers (see the module docstring)."""
    null = 1.0 / (marked.num_classes - 1)
    labels = np.asarray(suspect.labels)
    disagreed = int((labels != marked.model_labels).sum())
    label_matches = int((labels == marked.served_labels).sum())
    scores = suspect.probabilities
    if scores is not None and np.asarray(scores).shape == (len(marked), marked.num_classes):
        statistic: Statistic = "runner-up"
        matches, trials = int((runner_up(scores, marked.model_labels) == marked.served_labels).sum()), len(marked)
    else:
        statistic, matches, trials = "label", label_matches, disagreed
    p = binomial_pvalue(matches, trials, null)
    return ClientEvidence(marked.client_id, marked.client_name, len(marked), statistic, matches, trials, label_matches,
                          disagreed, null, p, min(1.0, p * tested))


def check_clone(evidence_from: ResponseStore | Sequence[MarkedSet], suspect: Target, *, alpha: float = DEFAULT_ALPHA,
                clients: list[str] | None = None, show_progress: bool = False) -> CloneCheck:
    """Test ``suspect`` against every client's marked answers (a store, or sets loaded from an export), or only
    ``clients`` (by id), and name the best match."""
    if isinstance(evidence_from, ResponseStore):
        ids = clients if clients is not None else [c.client_id for c in evidence_from.clients() if c.marked]
        sets = [s for s in (evidence_from.marked(cid) for cid in ids) if len(s)]
        where = str(evidence_from.path)
    else:
        sets = [s for s in evidence_from if len(s) and (clients is None or s.client_id in clients)]
        where = "the evidence given"
    if not sets:
        raise NoMarkedResponsesError(f"{where} holds no marked answers (of those clients); serve with response marking on first")
    results = []
    with progress_bar(sum(len(s) for s in sets), f"asking {suspect}", show_progress) as advance:
        for marked in sets:
            results.append(evidence(marked, _answers(suspect, marked.inputs, advance), len(sets)))
    results.sort(key=lambda e: (e.p_adjusted, e.p_value, e.client_name))
    outcome: Outcome = "clone-of-client" if results[0].p_adjusted <= alpha else "no-client-matches"
    return CloneCheck(str(suspect), alpha, outcome, results)


__all__ = ["CloneCheck", "ClientEvidence", "check_clone", "evidence", "DEFAULT_ALPHA"]
