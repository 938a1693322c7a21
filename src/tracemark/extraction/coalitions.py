"""Coalitions: naming the *group* of clients a clone learned from, when a thief split its queries over several keys.

A thief with three API keys gets a third of the marks on each; each key alone may then miss ``alpha`` although the
clone reproduced every mark. The evidence of a set ``S`` of clients is pooled: the rank test's statistic is the sum
of the served labels' ranks over all marks of ``S`` (the sum of the members' rank sums), the label test's the number
of agreements over all of ``S``'s answers off the model's label. Under the null hypothesis

    H_S: the suspect learned from none of the answers served to the clients in S

every mark of ``S`` has its own HMAC-drawn wrong label, independent of the suspect and of every other mark, so the
pooled statistic has the same exact null as one client's with all the marks together: a sum of independent
uniforms on {0, …, K−2} (:func:`~tracemark.extraction.clones.rank_sum_pvalue`), one per unit, or the label test's
convolutions over all the members' units, counts and per-unit plurality (:func:`~tracemark.extraction.clones.label_pvalue`).

**Which sets are searched, and why the error rate holds.** Clients are ranked by their own exact p-value; the
candidates are the prefixes of that ranking (top 1, top 2, …, at most ``max_size``), restricted to clients that
carry evidence of their own (Bonferroni p ≤ ``member_alpha``). Because the ranking and the restriction look at the
same data, a prefix's pooled p-value is not valid as it stands. It is adjusted for *every* set that could have been
chosen: a set of size k among n clients tested gets ``p × m × C(n, k)`` with ``m = min(max_size, n)`` sizes. For
any set N of clients the suspect did not learn from, the chance that *some* subset of N clears ``alpha`` is at most
``sum_k C(|N|, k) × alpha / (m × C(n, k)) ≤ alpha`` (a union bound over all subsets, whatever rule picked the one
reported). The coalition is the candidate with the smallest adjusted p-value (the smaller set on ties), always
including every client named on its own; it is named when that p-value is at most ``alpha``.

**Given groups.** Groups chosen *without looking at the marks* — keys created together
(:func:`groups_created_together`), a monitor's coalition alert — are tested whole, with no ``member_alpha`` and no
search: the creation times and query streams are independent of the HMAC-drawn wrong labels, so the pooled test of
a given group is exact as it stands. With G groups given, each gets ``p × 2G`` and the searched sets ``× 2`` more:
the two halves share ``alpha``.

**The error rates.** Single clients are named as before (Bonferroni over the n clients, at ``alpha``); groups — the
searched sets and the given groups together — are a second family at ``alpha``. The size-1 sets of the search need
the stricter ``p × m × n``, so they add nothing to the first family: in all, naming anyone (a client or a group)
made only of clients the clone never learned from has probability below ``2 × alpha``. Pass half the level you
want overall.

**What is claimed, and for whom.** A named coalition says "the clone learned from the answers served to this group"
— at least one member's marks, in the strict sense of the test; that claim is false with probability at most
``alpha``. Each member's own evidence is its own exact test (only its marks carry information about it), shown
beside the pooled one: members with a Bonferroni p ≤ ``alpha`` are *named on their own*, exactly as without
coalitions; the others are in the group because their marks add to its evidence and each passed ``member_alpha``
(searched), or because the group was given. A client that never fed the clone therefore joins a searched coalition
with probability at most ``member_alpha`` (Bonferroni over the clients tested), and in practice far less: it must
also lower the pooled p-value, which marks at chance level do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import comb, log10

from tracemark.extraction.clones import ClientEvidence, Statistic, label_pvalue, rank_sum_pvalue
from tracemark.extraction.errors import ExtractionError
from tracemark.serve.clients import Client

DEFAULT_MEMBER_ALPHA = 1e-3
"""A client joins a coalition only if its own Bonferroni-adjusted p-value is at most this."""
DEFAULT_MAX_SIZE = 8
"""Largest coalition searched for (the adjustment counts every set of each size up to it)."""


@dataclass(frozen=True)
class Coalition:
    """A group of clients whose marks the suspect reproduced, pooled: the members (strongest first), the pooled test
    (``matches`` of ``trials`` as in :class:`~tracemark.extraction.clones.ClientEvidence`), its exact p-value, the
    factor it is adjusted by (the sets that could have been chosen), the adjusted p-value, ``alpha``, and whether the
    group was given in advance (``given``) rather than searched for."""

    members: list[ClientEvidence]
    statistic: Statistic
    marked: int
    matches: int
    trials: int
    rank_sum: int | None
    p_value: float
    sets_counted: int
    p_adjusted: float
    alpha: float
    given: bool = False

    @property
    def named(self) -> bool:
        """Named: the pooled p-value after the adjustment is at most ``alpha``, or a member is named on its own."""
        return self.p_adjusted <= self.alpha or any(m.p_adjusted <= self.alpha for m in self.members)

    @property
    def named_alone(self) -> list[ClientEvidence]:
        """Members whose own Bonferroni-adjusted p-value clears ``alpha``."""
        return [m for m in self.members if m.p_adjusted <= self.alpha]

    def to_dict(self) -> dict:
        return {"named": self.named, "client_ids": [m.client_id for m in self.members],
                "client_names": [m.client_name for m in self.members], "statistic": self.statistic, "marked": self.marked,
                "matches": self.matches, "trials": self.trials, "rank_sum": self.rank_sum, "p_value": self.p_value,
                "sets_counted": self.sets_counted, "p_adjusted": self.p_adjusted, "given": self.given,
                "named_alone": [m.client_id for m in self.named_alone],
                "members": [{"client_id": m.client_id, "client_name": m.client_name, "marked": m.marked, "p_value": m.p_value,
                             "p_adjusted": m.p_adjusted, "named_alone": m.p_adjusted <= self.alpha} for m in self.members]}

    def __str__(self) -> str:
        names = _join([m.client_name for m in self.members])
        test = (f"rank sum {self.rank_sum} over {self.trials} marks" if self.rank_sum is not None
                else f"{self.matches}/{self.trials} label agreements")
        head = (f"learned from client{'s' if len(self.members) > 1 else ''} {names}" if self.named
                else f"best group {names} not named")
        each = "; ".join(f"{m.client_name} p = {m.p_value:.3g} (Bonferroni {m.p_adjusted:.3g}"
                         f"{', named on its own' if m.p_adjusted <= self.alpha else ''})" for m in self.members)
        why = (f"2 × the {self.sets_counted // 2} groups given in advance" if self.given
               else f"{self.sets_counted:,} sets that could have been chosen")
        return (f"{head}: combined p = {self.p_adjusted:.3g} ({test}, {self.marked} marked inputs, exact p {self.p_value:.3g} "
                f"× {why}); each: {each}")


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def pooled(members: Sequence[ClientEvidence]) -> tuple[Statistic, int, int, int, int | None, float]:
    """The pooled exact test of ``members`` (all of one statistic and class count): statistic, marked inputs, matches,
    trials, rank sum (rank test) and p-value."""
    if not members:
        raise ExtractionError("a coalition needs at least one client")
    statistic, null = members[0].statistic, members[0].null_rate
    if any(m.statistic != statistic or m.null_rate != null for m in members):
        raise ExtractionError("clients tested with different statistics or class counts cannot be pooled")
    marked = sum(m.marked for m in members)
    matches, trials = sum(m.matches for m in members), sum(m.trials for m in members)
    if statistic == "rank":
        rank_sum = sum(int(m.rank_sum or 0) for m in members)
        return statistic, marked, matches, trials, rank_sum, rank_sum_pvalue(rank_sum, trials, round(1.0 / null) + 1)
    wins = sum(int(m.unit_wins or 0) for m in members)
    return statistic, marked, matches, trials, None, label_pvalue(matches, [u for m in members for u in m.unit_counts], wins,
                                                                   [u for m in members for u in m.unit_plurality])


def sets_counted(n: int, size: int, max_size: int = DEFAULT_MAX_SIZE) -> int:
    """How many sets a coalition of ``size`` among ``n`` clients is adjusted for: ``min(max_size, n) × C(n, size)``."""
    return min(max_size, n) * comb(n, size)


def check_levels(alpha: float, member_alpha: float, max_size: int) -> None:
    """:class:`ExtractionError` unless ``0 < alpha <= member_alpha <= 1`` and ``max_size >= 1``."""
    if not 0.0 < alpha <= member_alpha <= 1.0:
        raise ExtractionError(f"need 0 < alpha <= member alpha <= 1, not alpha {alpha:g} and member alpha {member_alpha:g}")
    if max_size < 1:
        raise ExtractionError(f"the largest coalition must have at least one client, not {max_size}")


def find_coalition(clients: Sequence[ClientEvidence], alpha: float, member_alpha: float = DEFAULT_MEMBER_ALPHA,
                   max_size: int = DEFAULT_MAX_SIZE, groups: Sequence[Sequence[str]] = ()) -> Coalition | None:
    """The coalition among ``clients`` (every client tested, with Bonferroni p-values over all of them) from the searched
    sets and the ``groups`` given (client ids chosen without looking at the marks; see the module docstring), or
    ``None`` when there is no candidate or the clients were tested with different statistics or class counts (then
    only single clients are named). Every candidate includes the clients named on their own."""
    check_levels(alpha, member_alpha, max_size)
    if not clients or len({(c.statistic, c.null_rate) for c in clients}) > 1:
        return None
    n = len(clients)
    ranked = sorted(clients, key=lambda c: (c.p_value, c.client_name, c.client_id))
    alone = {c.client_id for c in ranked if c.p_adjusted <= alpha}
    given = [[c for c in ranked if c.client_id in set(g)] for g in groups]
    given = [g for g in given if g and alone <= {c.client_id for c in g}]
    share = 2 if groups else 1  # with groups given, they and the search share alpha
    candidates: list[tuple[list[ClientEvidence], int, bool]] = [(g, 2 * len(groups), True) for g in given]
    eligible = [c for c in ranked if c.p_adjusted <= member_alpha]
    for k in range(max(1, len(alone)), max(len(alone), min(len(eligible), max_size)) + 1):
        if k <= len(eligible):
            candidates.append((eligible[:k], share * sets_counted(n, k, max_size), False))
    best: Coalition | None = None
    for members, counted, is_given in candidates:
        statistic, marked, matches, trials, rank_sum, p = pooled(members)
        found = Coalition(members, statistic, marked, matches, trials, rank_sum, p, counted, min(1.0, p * counted), alpha, is_given)
        if best is None or (_log10(found.p_adjusted), len(found.members)) < (_log10(best.p_adjusted), len(best.members)):
            best = found
    return best


def groups_created_together(clients: Sequence[Client], within_s: float) -> list[list[str]]:
    """Client ids in groups of two or more whose creation times (the client store's ``created``) follow each other by at
    most ``within_s`` seconds (sorted by time; a longer gap starts a new group). Clients whose time cannot be read
    are left out. The groups depend only on the client store, never on the marks."""
    from tracemark.extraction.monitor import created_seconds

    if within_s < 0:
        raise ExtractionError(f"a creation-time window is at least 0 seconds, not {within_s:g}")
    timed = sorted((t, c.id) for c in clients if (t := created_seconds(c.created)) is not None)
    groups: list[list[str]] = []
    last = None
    for t, cid in timed:
        if last is not None and t - last <= within_s:
            groups[-1].append(cid)
        else:
            groups.append([cid])
        last = t
    return [g for g in groups if len(g) >= 2]


def _log10(p: float) -> float:
    return log10(p) if p > 0.0 else float("-inf")


__all__ = ["Coalition", "DEFAULT_MAX_SIZE", "DEFAULT_MEMBER_ALPHA", "check_levels", "find_coalition", "groups_created_together",
           "pooled", "sets_counted"]
