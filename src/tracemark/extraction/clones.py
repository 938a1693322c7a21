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

**Units.** With region marks (:mod:`~tracemark.extraction.marking`) every unusual input of a marked region gets the
same served label, so the marks of one region are not independent trials. Both tests therefore work on *units*: the
marked inputs grouped by region (cell, model's label; :func:`marked_units`), each with a representative (its input of
smallest input key — a choice that ignores every label) whose served label ``w`` is the unit's. ``w`` is uniform over
the K−1 classes other than ``v`` and independent of everything the suspect says, whether it was drawn per input or per
region, and independent across units; so

* the rank test ranks ``w`` in the suspect's scores summed over the unit (one uniform rank per unit), and
* the label test counts the unit's inputs the suspect labels ``w``: under the null that count is a uniform draw from
  the unit's K−1 counts of off-``v`` labels, and the p-value of the total is the exact convolution of those draws
  (:func:`agreement_pvalue`, floating point). A unit of one input is exactly the per-input tests above (the label test
  is then Binomial(d, 1/(K−1))); per-input marks mostly are their own unit. Counts let one large unit outweigh many
  small ones (a region of 800 inputs the clone answers alike is one draw in K−1), so the label test also scores each
  unit once: 1 when ``w`` is among the suspect's most frequent off-``v`` labels on it, a draw of 1 with probability
  (tied labels)/(K−1) under the null, the total's tail by the same convolution (:func:`plurality_counts`). Its
  p-value is the smaller of the two, doubled (Bonferroni over the two statistics), so it stays a valid bound.

The rank test is used whenever the suspect gives scores, the label test otherwise; the choice depends only
on what the suspect returns. Every client is tested; p-values are Bonferroni-adjusted over the number of
clients tested, and **every** client whose adjusted p-value is at most ``alpha`` is named (a thief's several keys
are all named, not one of several equals). Beside single clients, groups are tested with their marks pooled
(:mod:`~tracemark.extraction.coalitions`): a thief who split its queries over several keys is named as the coalition
of those keys even when no key alone clears ``alpha``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from math import comb
from typing import TYPE_CHECKING, Literal

import numpy as np

from tracemark._progress import progress_bar
from tracemark.extraction.errors import NoMarkedResponsesError
from tracemark.extraction.marking import cells, input_key
from tracemark.extraction.store import MarkedSet, ResponseStore
from tracemark.targets.base import Answers, Target
from tracemark.verification.stats import log10_or_floor

if TYPE_CHECKING:
    from tracemark.extraction.coalitions import Coalition

DEFAULT_ALPHA = 1e-6
"""Default significance level for naming a client (after the Bonferroni adjustment)."""
QUERY_CHUNK = 256

Outcome = Literal["clone-of-client", "clone-of-coalition", "no-client-matches"]
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
    units: int = 0
    unit_wins: int | None = None
    """Label test: the units whose served label is among the suspect's most frequent off-label answers."""
    unit_counts: tuple[tuple[int, ...], ...] = field(default=(), repr=False, compare=False)
    """Label test: each unit's counts of the suspect's labels over the K−1 classes other than the model's (its null)."""
    unit_plurality: tuple[tuple[int, ...], ...] = field(default=(), repr=False, compare=False)
    """Label test: the per-unit plurality statistic's null draws (:func:`plurality_counts`)."""

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("unit_counts", "unit_plurality")}

    def __str__(self) -> str:
        if self.rank_sum is not None:
            null_mean = self.trials * (1.0 / self.null_rate - 1.0) / 2.0
            test = (f"rank test over {self.trials} units: served label ranked first of the other classes {self.matches}/{self.trials}, "
                    f"rank sum {self.rank_sum} (null mean {null_mean:g})")
        else:
            test = (f"label test over {self.units} units: {self.matches} of {self.trials} off-label answers give their unit's "
                    "served label")
        return (f"{self.client_name} ({self.client_id}): {test} ({self.label_matches} of {self.marked} marked labels reproduced, "
                f"{self.disagreed} answered off the model's label), p = {self.p_value:.3g}, Bonferroni {self.p_adjusted:.3g}")


@dataclass(frozen=True)
class CloneCheck:
    """The outcome for one suspect: every client's evidence (best first), the clients named, the coalition, the margin.

    ``clone-of-client``: at least one client clears ``alpha`` on its own (all such clients are named);
    ``clone-of-coalition``: none does, but a group's pooled marks do (:attr:`coalition`); else ``no-client-matches``.
    """

    suspect: str
    alpha: float
    outcome: Outcome
    clients: list[ClientEvidence] = field(default_factory=list)
    coalition: Coalition | None = None

    @property
    def named(self) -> ClientEvidence | None:
        """The strongest client named on its own, or ``None``."""
        return self.clients[0] if self.outcome == "clone-of-client" else None

    @property
    def named_clients(self) -> list[ClientEvidence]:
        """Every client whose own Bonferroni-adjusted p-value is at most ``alpha``, strongest first."""
        return [c for c in self.clients if c.p_adjusted <= self.alpha]

    @property
    def margin(self) -> float | None:
        """Orders of magnitude (log10) between the weakest client named (on its own, else in the named coalition, else
        the best client) and the strongest client left out; ``None`` when every client is in."""
        if self.named_clients:
            inside = len(self.named_clients)
        elif self.coalition is not None and self.coalition.named:
            inside = len(self.coalition.members)
        else:
            inside = 1
        if len(self.clients) <= inside:
            return None
        return log10_or_floor(self.clients[inside].p_adjusted) - log10_or_floor(self.clients[inside - 1].p_adjusted)

    def to_dict(self) -> dict:
        named = self.named
        return {"suspect": self.suspect, "alpha": self.alpha, "outcome": self.outcome,
                "named": named.to_dict() if named else None, "named_clients": [c.to_dict() for c in self.named_clients],
                "coalition": self.coalition.to_dict() if self.coalition is not None else None, "margin_log10": self.margin,
                "clients": [c.to_dict() for c in self.clients]}

    def __str__(self) -> str:
        lines = [f"suspect: {self.suspect}"]
        named = self.named_clients
        margin = f"; next client {self.margin:.1f} orders of magnitude behind" if self.margin is not None else ""
        if len(named) == 1:
            lines.append(f"learned from client {named[0].client_name} (p = {named[0].p_adjusted:.3g} after Bonferroni over "
                         f"{len(self.clients)} clients{margin})")
        elif named:
            who = ", ".join(f"{c.client_name} (p = {c.p_adjusted:.3g})" for c in named)
            lines.append(f"learned from clients {who}, each on its own after Bonferroni over {len(self.clients)} clients{margin}")
        elif self.coalition is not None and self.coalition.named:
            lines.append(f"no client alone clears alpha = {self.alpha:g}, but a group does{margin}")
        else:
            lines.append(f"no client matches (best Bonferroni-adjusted p-value above alpha = {self.alpha:g}; "
                         "no group's pooled marks clear it either)")
        if self.coalition is not None and (len(self.coalition.members) > 1 and self.coalition.named or not named):
            lines.append(f"coalition: {self.coalition}")
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


def marked_units(marked: MarkedSet) -> tuple[np.ndarray, np.ndarray]:
    """Each marked input's unit (region: cell and model's label) and each unit's representative (its input of smallest
    input key), as indices into ``marked``; units are numbered in order of (cell, label)."""
    if not len(marked):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    region = np.stack([cells(marked.inputs), np.asarray(marked.model_labels, dtype=np.int64)], axis=1)
    unit = np.unique(region, axis=0, return_inverse=True)[1].reshape(-1)
    keys = np.array([input_key(x) for x in marked.inputs])
    order = np.lexsort((keys, unit))
    firsts = order[np.r_[0, np.flatnonzero(np.diff(unit[order])) + 1]]
    return unit, firsts


def evidence(marked: MarkedSet, suspect: Answers, tested: int) -> ClientEvidence:
    """The exact test of one client's marked set against the suspect's answers, over units (see the module docstring)."""
    k = marked.num_classes
    null = 1.0 / (k - 1)
    labels = np.asarray(suspect.labels, dtype=np.int64)
    disagreed = int((labels != marked.model_labels).sum())
    label_matches = int((labels == marked.served_labels).sum())
    unit, firsts = marked_units(marked)
    unit_model, unit_served = np.asarray(marked.model_labels)[firsts], np.asarray(marked.served_labels)[firsts]
    scores = suspect.probabilities
    rank_sum: int | None = None
    if scores is not None and np.asarray(scores).shape == (len(marked), k):
        statistic: Statistic = "rank"
        summed = np.zeros((len(firsts), k))
        np.add.at(summed, unit, np.asarray(scores, dtype=np.float64))
        ranks = served_label_ranks(summed, unit_model, unit_served)
        matches, trials, rank_sum = int((ranks == 0).sum()), len(firsts), int(ranks.sum())
        p = rank_sum_pvalue(rank_sum, trials, k)
    else:
        statistic = "label"
        counts = np.zeros((len(firsts), k), dtype=np.int64)
        np.add.at(counts, (unit, labels), 1)
        matches = int(counts[np.arange(len(firsts)), unit_served].sum())
        off = [row.sum() > row[v] for row, v in zip(counts, unit_model)]
        unit_counts = tuple(tuple(int(c) for c in np.delete(row, v)) for row, v, o in zip(counts, unit_model, off) if o)
        plurality = plurality_counts(counts, unit_model)
        wins = int(sum(row[w] == np.delete(row, v).max() for row, v, w, o in zip(counts, unit_model, unit_served, off) if o))
        p = label_pvalue(matches, unit_counts, wins, plurality)
        return ClientEvidence(marked.client_id, marked.client_name, len(marked), statistic, matches, disagreed, None, label_matches,
                              disagreed, null, p, min(1.0, p * tested), len(firsts), wins, unit_counts, plurality)
    return ClientEvidence(marked.client_id, marked.client_name, len(marked), statistic, matches, trials, rank_sum, label_matches,
                          disagreed, null, p, min(1.0, p * tested), len(firsts))


def label_pvalue(matches: int, unit_counts: Sequence[Sequence[int]], wins: int,
                 unit_plurality: Sequence[Sequence[int]]) -> float:
    """The label test's p-value: the smaller of the count and the per-unit plurality statistics' exact tails, doubled."""
    return min(1.0, 2 * min(agreement_pvalue(matches, unit_counts), agreement_pvalue(wins, unit_plurality)))


def plurality_counts(counts: np.ndarray, unit_model: np.ndarray) -> tuple[tuple[int, ...], ...]:
    """Per unit with an off-label answer, over the K−1 classes other than the model's: 1 where the suspect's count of
    that label is its largest (ties all score), else 0 — the per-unit plurality statistic's null draws."""
    out = []
    for row, v in zip(counts, unit_model):
        others = np.delete(row, v)
        if others.max() > 0:
            out.append(tuple(int(c == others.max()) for c in others))
    return tuple(out)


def agreement_pvalue(observed: int, unit_counts: Sequence[Sequence[int]]) -> float:
    """``P(T >= observed)`` for ``T`` the sum over units of one draw, uniform over that unit's counts: the label test's
    null (see the module docstring), by exact convolution in floating point."""
    dist = np.ones(1)
    for values in unit_counts:
        new = np.zeros(len(dist) + max(values))
        for count in values:
            new[count:count + len(dist)] += dist
        dist = new / len(values)
    return float(min(1.0, dist[observed:].sum())) if observed < len(dist) else 0.0


def check_clone(evidence_from: ResponseStore | Sequence[MarkedSet], suspect: Target, *, alpha: float = DEFAULT_ALPHA,
                clients: list[str] | None = None, show_progress: bool = False, member_alpha: float | None = None,
                max_coalition: int | None = None, groups: Sequence[Sequence[str]] = ()) -> CloneCheck:
    """Test ``suspect`` against every client's marked answers (a store, or sets loaded from an export), or only
    ``clients`` (by id); name every client that clears ``alpha`` and the coalition whose pooled marks the suspect
    learned (``member_alpha``, ``max_coalition``, ``groups`` of client ids chosen without looking at the marks: see
    :func:`~tracemark.extraction.coalitions.find_coalition`)."""
    from tracemark.extraction.coalitions import DEFAULT_MAX_SIZE, DEFAULT_MEMBER_ALPHA, check_levels, find_coalition

    member_alpha = max(alpha, DEFAULT_MEMBER_ALPHA) if member_alpha is None else member_alpha
    max_coalition = DEFAULT_MAX_SIZE if max_coalition is None else max_coalition
    check_levels(alpha, member_alpha, max_coalition)  # before the suspect is asked anything
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
    coalition = find_coalition(results, alpha, member_alpha, max_coalition, groups)
    outcome: Outcome = ("clone-of-client" if results[0].p_adjusted <= alpha
                        else "clone-of-coalition" if coalition is not None and coalition.named else "no-client-matches")
    return CloneCheck(str(suspect), alpha, outcome, results, coalition)


__all__ = ["CloneCheck", "ClientEvidence", "check_clone", "evidence", "marked_units", "agreement_pvalue", "rank_sum_pvalue", "served_label_ranks", "DEFAULT_ALPHA"]
