"""Null models: how often a model that never saw the key gives the watermark label.

Three sources, most rigorous first:

* ``keyed``: keys with secret per-trigger random labels make the rate exact by construction
  (1/(K-1) for triggers built on real images, whose true class is excluded; 1/K otherwise).
* ``empirical``: reference models trained without the key (WRT's protocol); the rate is the
  one-sided Clopper-Pearson upper bound of their pooled match rate.
* ``assumed``: a stated bound for single-target keys when no reference models are given.
* ``control``: for single-target keys built on real images, the suspect's own rate of giving the
  watermark class to the *unstamped* source images (Clopper-Pearson upper bound). A model that
  answers that class to everything is then not mistaken for a copy.

When several apply, the largest rate is used, so adding references can only make a verdict
more cautious.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from tracemark.keys.key import WatermarkKey
from tracemark.targets.base import Target
from tracemark.verification.stats import clopper_pearson_upper

ASSUMED_SINGLE_TARGET_RATE = 0.5
EMPIRICAL_CONFIDENCE = 0.999


@dataclass(frozen=True)
class NullModel:
    """The null rate used for a verdict, and where it came from."""

    source: str
    rate: float
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "NullModel":
        return cls(str(data["source"]), float(data["rate"]), dict(data.get("details", {})))

    def __str__(self) -> str:
        return f"{self.source} null, rate {self.rate:.4g}"


def keyed_null(key: WatermarkKey) -> NullModel | None:
    """The exact null of a keyed-label key, or None for single-target keys."""
    rate = key.triggers().null_rate
    if rate is None:
        return None
    why = "labels drawn uniformly from the K-1 classes other than the image's own" if key.kind in ("content", "noise") else "labels drawn uniformly from K classes"
    return NullModel("keyed", rate, {"reason": why, "num_classes": key.num_classes})


def empirical_null(key: WatermarkKey, references: Sequence[Target], confidence: float = EMPIRICAL_CONFIDENCE) -> NullModel:
    """Query reference (independently trained) models with the triggers; bound their match rate."""
    triggers = key.triggers()
    per_model = []
    for reference in references:
        labels = reference.predict_labels(triggers.inputs)
        per_model.append(int(np.sum(labels == triggers.labels)))
    trials = len(per_model) * len(triggers)
    pooled = int(sum(per_model))
    rate = clopper_pearson_upper(pooled, trials, confidence)
    return NullModel(
        "empirical",
        rate,
        {
            "n_models": len(per_model),
            "matches_per_model": per_model,
            "queries_per_model": len(triggers),
            "pooled_rate": pooled / trials if trials else None,
            "confidence": confidence,
            "models": [str(r) for r in references],
        },
    )


def control_null(key: WatermarkKey, answers: np.ndarray, confidence: float = EMPIRICAL_CONFIDENCE) -> NullModel:
    """Bound the suspect's rate of answering the watermark class on unstamped source images.

    ``answers`` are the suspect's labels for ``key.base_images`` (-1 where unanswered).
    """
    answered = answers[answers >= 0]
    hits = int(np.sum(answered == key.target_label))
    return NullModel(
        "control",
        clopper_pearson_upper(hits, len(answered), confidence),
        {"reason": "the suspect's own rate of giving the watermark class to the unstamped source images",
         "control_matches": hits, "control_queries": int(len(answered)), "confidence": confidence},
    )


def choose_null(key: WatermarkKey, empirical: NullModel | None = None, assumed_rate: float | None = None,
                control: NullModel | None = None) -> NullModel:
    """The most cautious applicable null for ``key`` (see module docstring)."""
    candidates = [n for n in (keyed_null(key), empirical) if n is not None]
    if not candidates or assumed_rate is not None:
        rate = ASSUMED_SINGLE_TARGET_RATE if assumed_rate is None else float(assumed_rate)
        candidates.append(NullModel("assumed", rate, {"reason": "single-target key without reference models: a stated bound, not a measurement"}))
    if control is not None:
        candidates.append(control)
    return max(candidates, key=lambda n: n.rate)
