"""Which client did a clone learn from? Ask the suspect each client's marked inputs and count agreements.

The tests are exact, with no calibration. A client's wrong label ``w`` for a marked input is drawn by an
HMAC under that client's secret, uniformly among the K−1 classes other than the model's own label ``v``.
A suspect that never learned from that client's answers — an independent model, or a clone of another
client — answers without knowing ``w``, so:

* **rank test** (when the suspect gives scores: a local model, or an API returning probabilities): the rank
  of ``w`` among the K−1 classes other than ``v`` in the suspect's scores (0 = its runner-up; ties count
  against) is uniform on {0, …, K−2} for a suspect that does not know ``w``, independently across marked
  inputs. The test is on the sum of ranks, whose null distribution (a sum of independent discrete uniforms)
  is computed exactly in integer arithmetic. A clone that half-learned a marked answer ranks ``w`` high even
  when its label did not flip — for out-of-domain clones often second or third rather than first — so the
  rank sum uses evidence a runner-up count (rank 0 only) throws away.
* **label test** (labels only): ``P(s = w) = 1/(K−1)`` when the suspect's label ``s ≠ v`` and 0 when
  ``s = v``, so the number of agreements is at most Binomial(d, 1/(K−1)), ``d`` counting the marked
  inputs the suspect answers off ``v``. Conditioning on ``d`` is much stronger than DAWN's unconditional
  test: an accurate clone agrees with ``v`` on the marks it did not memorise, and they cost nothing.

The rank test is used whenever the suspect gives scores, the label test otherwise; the choice depends only
on what the suspect returns. Every client is tested; p-values are Bonferroni-adjusted over the number of
clients tested, and the best client is named only when its adjusted p-value is at most ``alpha``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from math import comb
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
Statistic = Literal["rank", "label"]


@dataclass(frozen=True)
class ClientEvidence:
    """One client's test: marked inputs asked, the statistic used, ``matches`` out of ``trials`` (rank test: served
    labels the suspect ranks first among the other classes, with ``rank_sum`` the tested statistic; label test:
    agreements), and (always) the label agreements and how many answers were off the model's label."""

    client_id: str
    client_name: str
    marked: int
    statistic: Statistic
    matches: int
    trials: int
    rank_sum: int | None
    label_matches: int
    disagreed: int
    null_rate: float
    p_value: float
    p_adjusted: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def __str__(self) -> str:
        if self.rank_sum is not None:
            null_mean = self.trials * (1.0 / self.null_rate - 1.0) / 2.0
            test = (f"rank test: served label ranked first of the other classes {self.matches}/{self.trials}, "
                    f"rank sum {self.rank_sum} (null mean {null_mean:g})")
        else:
            test = f"label test {self.matches}/{self.trials} (null {self.null_rate:.3g})"
        return (f"{self.client_name} ({self.client_id}): {test} ({self.label_matches} of {self.marked} marked labels reproduced, "
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


def served_label_ranks(scores: np.ndarray, model_labels: np.ndarray, served_labels: np.ndarray) -> np.ndarray:
    """For each row, how many classes other than the model's label and the served one score at least as high as
    the served label (0: the served label is the suspect's runner-up; ties count against it)."""
    s = np.array(scores, dtype=np.float64, copy=True)
    rows = np.arange(len(s))
    served = s[rows, served_labels][:, None]
    s[rows, model_labels] = -np.inf
    return (s >= served).sum(axis=1) - 1


def rank_sum_pvalue(total: int, n: int, num_classes: int) -> float:
    """``P(S <= total)`` for ``S`` the sum of ``n`` independent uniform draws from {0, …, K−2}: exact.

    The number of such sequences with sum at most ``t`` is ``sum_j (-1)^j C(n, j) C(t − j(K−1) + n, n)``
    (inclusion–exclusion); it is computed in integers, each term from the last, and divided by ``(K−1)^n``.
    """
    m = num_classes - 1
    if n == 0 or total >= n * (m - 1):
        return 1.0
    if total < 0:
        return 0.0
    count, sign, choose_j = 0, 1, 1
    top = total + n  # C(top, n) with top = t − j m + n
    choose_top = comb(top, n)
    for j in range(0, min(n, total // m) + 1):
        count += sign * choose_j * choose_top
        choose_j = choose_j * (n - j) // (j + 1)
        for _ in range(m):  # C(top − 1, n) = C(top, n) (top − n) / top
            choose_top = choose_top * (top - n) // top if top > n else 0
            top -= 1
        sign = -sign
    return float(Fraction(count, m**n))


def evidence(marked: MarkedSet, suspect: Answers, tested: int) -> ClientEvidence:
    """The exact test of one client's marked set against the suspect's answers (see the module docstring)."""
    null = 1.0 / (marked.num_classes - 1)
    labels = np.asarray(suspect.labels)
    disagreed = int((labels != marked.model_labels).sum())
    label_matches = int((labels == marked.served_labels).sum())
    scores = suspect.probabilities
    rank_sum: int | None = None
    if scores is not None and np.asarray(scores).shape == (len(marked), marked.num_classes):
        statistic: Statistic = "rank"
        ranks = served_label_ranks(np.asarray(scores), marked.model_labels, marked.served_labels)
        matches, trials, rank_sum = int((ranks == 0).sum()), len(marked), int(ranks.sum())
        p = rank_sum_pvalue(rank_sum, trials, marked.num_classes)
    else:
        statistic, matches, trials = "label", label_matches, disagreed
        p = binomial_pvalue(matches, trials, null)
    return ClientEvidence(marked.client_id, marked.client_name, len(marked), statistic, matches, trials, rank_sum, label_matches,
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


__all__ = ["CloneCheck", "ClientEvidence", "check_clone", "evidence", "rank_sum_pvalue", "served_label_ranks", "DEFAULT_ALPHA"]
