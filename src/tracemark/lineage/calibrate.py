"""Calibration: how often a model that does not derive from the source gives a fingerprint's expected labels.

Held-out independent references (never used to generate the fingerprint) answer every fingerprint input.
A suspect's p-value is the binomial tail P(X ≥ matches), X ~ Binomial(n, rate), over all ``n`` inputs (an
unanswered input counts as no match). Rates differ from input to input; by Hoeffding (1956) the binomial tail
at the mean rate bounds the tail of such a sum wherever ``matches ≥ n·mean + 1``, which is where decisions are
made. Rates also differ from *model* to *model*, and that is what decides the bound (``rule``):

- ``worst-reference`` (the default): the null rate is the one-sided Clopper–Pearson upper bound, at
  ``confidence`` (default 1 − 1e-9), of the rate of the reference that agreed most. Assumption: an independent
  suspect agrees no more often than the most agreeable of the held-out references (they are drawn to span the
  architectures, data sizes and learning rates an independent party would use). On MNIST, independent models
  agree with a fingerprint at rates from 5% to 44% depending on learning rate and architecture
  (docs/benchmarks.md), and a bound on the *pooled* rate called 2 of 20 of them copies: the pooled bound is
  not valid for a heterogeneous population, whatever a fit check with 100 inputs says.
- ``fit-checked`` (how version-1 files before this rule were calibrated, still read): the Clopper–Pearson bound
  on the pooled agreement rate (all references × all inputs), unless a leave-one-out check (for each reference,
  how likely its count is under the others' pooled rate, Bonferroni over references) fails at ``fit_p`` < 0.01,
  in which case the worst reference's bound.

The stated error rate of a ``copy`` verdict is ``alpha + (1 − confidence)``: alpha for the test, the rest for
the chance that the bound itself is wrong. The verdict is ``inconclusive`` when the pool cannot support alpha:
fewer than ``min_references`` references, or a bound so high that even n of n matches would not reach alpha
(:meth:`Calibration.supported_alpha`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats

from tracemark.lineage.errors import LineageFileError
from tracemark.targets.base import Target
from tracemark.verification.stats import binomial_pvalue, clopper_pearson_upper

DEFAULT_CONFIDENCE = 1 - 1e-9
MIN_REFERENCES = 5
FIT_LEVEL = 0.01
RULES = ("worst-reference", "fit-checked")
DEFAULT_RULE = "worst-reference"


@dataclass(frozen=True)
class Calibration:
    """Agreement of each held-out reference with the expected labels, and the null rate bound from them."""

    references: tuple[str, ...]
    n_inputs: int
    agreements: tuple[int, ...]
    per_input: tuple[int, ...]
    confidence: float
    bound: str
    rate: float
    fit_p: float | None
    min_references: int = MIN_REFERENCES
    rule: str = DEFAULT_RULE

    @property
    def pooled_rate(self) -> float:
        """Observed agreements over all reference answers."""
        trials = len(self.agreements) * self.n_inputs
        return sum(self.agreements) / trials if trials else float("nan")

    def p_value(self, matches: int) -> float:
        """P(X >= matches) for X ~ Binomial(n_inputs, rate)."""
        return binomial_pvalue(int(matches), self.n_inputs, self.rate)

    def supported_alpha(self) -> float:
        """The smallest p-value this calibration can give: all inputs matching."""
        return self.p_value(self.n_inputs)

    def error_rate(self, alpha: float) -> float:
        """The stated false-accusation rate of a ``copy`` verdict at ``alpha``."""
        return alpha + (1 - self.confidence)

    def too_small(self, alpha: float) -> str | None:
        """Why the pool cannot support ``alpha`` (``None`` when it can)."""
        k = len(self.agreements)
        if k < self.min_references:
            return (f"{k} calibration references are too few to check the null's fit (at least {self.min_references}); "
                    "build the lineage with more calibration references")
        if self.supported_alpha() > alpha:
            return (f"{k} references x {self.n_inputs} inputs bound the null rate at {self.rate:.3g}, which supports "
                    f"alpha >= {self.supported_alpha():.2g} only (even {self.n_inputs} of {self.n_inputs} matches); "
                    "add references or inputs")
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"references": list(self.references), "n_inputs": self.n_inputs, "agreements": list(self.agreements),
                "per_input": list(self.per_input), "confidence": self.confidence, "bound": self.bound,
                "rate": self.rate, "pooled_rate": self.pooled_rate, "fit_p": self.fit_p,
                "min_references": self.min_references, "rule": self.rule}

    @classmethod
    def from_dict(cls, doc: Any, n_inputs: int, where: str) -> "Calibration":
        """Parse a calibration record from a (possibly hostile) file, checking every field's type and range."""
        try:
            refs = doc["references"]
            agreements, per_input = doc["agreements"], doc["per_input"]
            ok = (isinstance(refs, list) and len(refs) <= 10_000 and all(isinstance(r, str) and len(r) <= 512 for r in refs)
                  and isinstance(agreements, list) and len(agreements) == len(refs)
                  and all(type(a) is int and 0 <= a <= n_inputs for a in agreements)
                  and isinstance(per_input, list) and len(per_input) == n_inputs
                  and all(type(c) is int and 0 <= c <= len(refs) for c in per_input)
                  and sum(per_input) == sum(agreements) and doc["n_inputs"] == n_inputs
                  and doc["bound"] in ("pooled", "worst-reference")
                  and all(type(doc[f]) in (int, float) and 0 < doc[f] <= 1 for f in ("confidence", "rate"))
                  and (doc["fit_p"] is None or (type(doc["fit_p"]) in (int, float) and 0 <= doc["fit_p"] <= 1))
                  and type(doc["min_references"]) is int and 1 <= doc["min_references"] <= 10_000
                  and doc.get("rule", "fit-checked") in RULES)
        except (KeyError, TypeError) as exc:
            raise LineageFileError(f"{where}: calibration record is malformed ({exc!r})") from exc
        if not ok:
            raise LineageFileError(f"{where}: calibration record has a field of the wrong type, length or range")
        calibration = cls(tuple(refs), n_inputs, tuple(agreements), tuple(per_input), float(doc["confidence"]),
                          doc["bound"], float(doc["rate"]), None if doc["fit_p"] is None else float(doc["fit_p"]),
                          int(doc["min_references"]), doc.get("rule", "fit-checked"))
        expected = null_rate(calibration.agreements, n_inputs, calibration.confidence, calibration.rule)
        if not math.isclose(expected[1], calibration.rate, rel_tol=1e-9) or expected[0] != calibration.bound:
            raise LineageFileError(f"{where}: calibration rate {calibration.rate:.6g} does not follow from its agreements "
                                   f"({expected[1]:.6g}); the file was altered")
        return calibration

    def __str__(self) -> str:
        fit = "fit not checked" if self.fit_p is None else f"leave-one-out fit p {self.fit_p:.3g}"
        return (f"calibration: {len(self.agreements)} independent references agree on {sum(self.agreements)} of "
                f"{len(self.agreements) * self.n_inputs} answers (pooled {self.pooled_rate:.3g}); {self.bound} "
                f"Clopper-Pearson bound {self.rate:.3g} at confidence 1-{1 - self.confidence:.0e} ({self.rule} rule); {fit}")


def _fit_p(agreements: Sequence[int], n: int) -> float | None:
    k = len(agreements)
    if k < 2:
        return None
    total = sum(agreements)
    worst = 1.0
    for a in agreements:
        rest = (total - a) / ((k - 1) * n)
        tail = (1.0 if a == 0 else 0.0) if rest == 0 else float(stats.binom.sf(a - 1, n, rest))
        worst = min(worst, tail)
    return min(1.0, k * worst)


def null_rate(agreements: Sequence[int], n: int, confidence: float,
              rule: str = DEFAULT_RULE) -> tuple[str, float, float | None]:
    """The bound's kind, the rate, and the leave-one-out fit p-value, from per-reference agreement counts."""
    if rule not in RULES:
        raise ValueError(f"unknown calibration rule {rule!r}; use one of {', '.join(RULES)}")
    fit = _fit_p(agreements, n)
    if rule == "worst-reference" or (fit is not None and fit < FIT_LEVEL):
        return "worst-reference", clopper_pearson_upper(max(agreements), n, confidence), fit
    return "pooled", clopper_pearson_upper(sum(agreements), len(agreements) * n, confidence), fit


def calibrate(inputs: np.ndarray, labels: np.ndarray, references: Sequence[Target], *,
              confidence: float = DEFAULT_CONFIDENCE, min_references: int = MIN_REFERENCES,
              rule: str = DEFAULT_RULE) -> Calibration:
    """Ask each reference every input (uint8 images, value/255) and bound the rate at which they give ``labels``
    (``rule``: ``worst-reference`` or ``fit-checked``, see the module docstring)."""
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    x = np.ascontiguousarray(inputs, dtype=np.float32) / np.float32(255)
    hits = np.array([r.predict_labels(x) == labels for r in references], dtype=bool).reshape(len(references), len(labels))
    agreements = tuple(int(v) for v in hits.sum(axis=1))
    bound, rate, fit = null_rate(agreements, len(labels), confidence, rule)
    return Calibration(tuple(str(r) for r in references), int(len(labels)), agreements,
                       tuple(int(v) for v in hits.sum(axis=0)), confidence, bound, rate, fit, min_references, rule)
