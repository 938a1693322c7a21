"""Where marks go: a profile of normal inputs, so unusual inputs are marked more often than typical ones.

Out-of-domain thieves (Fashion-MNIST pictures sent to a digit model, and the reverse) ask inputs unlike the
model's own data; honest clients mostly do not. A clone also learns a mark on an isolated input more readily
than one surrounded by correctly answered neighbours. The profile therefore splits the marking rate:

* the **score** of an input is how badly a principal-component model of in-distribution inputs reconstructs it:
  the L2 norm of ``x − mean`` outside the top ``components`` directions (input space, so it works for any served
  model and needs none of its internals);
* **calibration** on the operator's own in-distribution images, seeded: a random ``n_fit`` of them fit the mean
  and the components; the threshold is the ``1 − unusual_share`` quantile of the scores of ``n_threshold``
  others (held out), so a known share ``q`` of in-distribution inputs is *unusual*;
* unusual inputs are marked at ``boost`` times the typical rate, and the typical rate is set so that
  in-distribution traffic is marked at ``rate`` on average: ``typical = rate / (1 + q (boost − 1))``,
  ``unusual = boost × typical`` (at most :data:`~tracemark.extraction.settings.MAX_RATE`).

The score is computed on the input's canonical form (rounded to the marking grid), so the same canonical input
always gets the same rate and the marking decision stays a function of the input alone. ``boost = 1`` is the
uniform rate. Honest clients whose inputs are themselves unusual pay the unusual rate on those inputs.

With ``region_marks`` (the default of :meth:`MarkingProfile.calibrate` since it was measured; profiles stored
before it lack the field and keep per-input marks), the unusual rate selects *regions* rather than inputs: see
:func:`~tracemark.extraction.marking.decide_region`.
"""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tracemark._util.canonical import canonical_json
from tracemark.extraction.errors import MarkingProfileError
from tracemark.extraction.settings import DEFAULT_BOOST, DEFAULT_COMPONENTS, DEFAULT_REGION_MARKS, DEFAULT_UNUSUAL_SHARE, MAX_RATE

PROFILE_FORMAT = "tracemark-marking-profile"
PROFILE_VERSION = 1


def _encode(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode()


def _decode(text: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(shape).astype(np.float64)


@dataclass(frozen=True, eq=False)
class MarkingProfile:
    """A calibrated split of the marking rate between typical and unusual inputs (see the module docstring)."""

    input_shape: tuple[int, ...]
    mean: np.ndarray
    components: np.ndarray
    threshold: float
    unusual_share: float
    boost: float
    seed: int
    n_fit: int
    n_threshold: int
    data_sha256: str
    region_marks: bool = False

    def __post_init__(self) -> None:
        _check_split(self.unusual_share, self.boost)
        dim = math.prod(self.input_shape)
        if self.mean.shape != (dim,) or self.components.ndim != 2 or self.components.shape[1] != dim:
            raise MarkingProfileError("the profile's mean and components do not match its input shape")

    @classmethod
    def calibrate(cls, x: np.ndarray, *, unusual_share: float = DEFAULT_UNUSUAL_SHARE, boost: float = DEFAULT_BOOST,
                  components: int = DEFAULT_COMPONENTS, n_fit: int = 5000, n_threshold: int = 5000, seed: int = 0,
                  step: float = 1.0 / 255.0, region_marks: bool = DEFAULT_REGION_MARKS) -> "MarkingProfile":
        """Fit on a seeded random ``n_fit`` of ``x`` (N×C×H×W in-distribution images) and set the threshold on
        ``n_threshold`` others; with fewer than ``n_fit + n_threshold`` images, half of them each. ``region_marks``:
        unusual inputs are marked by region (see the module docstring)."""
        _check_split(unusual_share, boost)
        x = np.ascontiguousarray(x, dtype="<f4")
        if x.ndim < 2:
            raise MarkingProfileError("calibration needs a batch of inputs (N×C×H×W)")
        if len(x) < n_fit + n_threshold:
            n_fit = n_threshold = len(x) // 2
        if n_threshold < 100:
            raise MarkingProfileError(f"calibration needs at least 200 in-distribution inputs, not {len(x)}")
        order = np.random.default_rng(seed).permutation(len(x))

        def canonical(rows: np.ndarray) -> np.ndarray:
            return (np.rint(x[rows].astype(np.float64) / step) * step).reshape(len(rows), -1)

        fit, held = canonical(order[:n_fit]), canonical(order[n_fit:n_fit + n_threshold])
        mean = fit.mean(axis=0)
        k = max(1, min(components, n_fit - 1, fit.shape[1] - 1))
        basis = np.linalg.svd(fit - mean, full_matrices=False)[2][:k]
        # round to the stored precision first, so the threshold is set with exactly what the server will use
        mean, basis = mean.astype("<f4").astype(np.float64), basis.astype("<f4").astype(np.float64)
        held_scores = _residuals(held, mean, basis)
        threshold = float(np.quantile(held_scores, 1.0 - unusual_share, method="higher"))
        digest = hashlib.sha256(memoryview(x).cast("B")).hexdigest()
        return cls(tuple(int(d) for d in x.shape[1:]), mean, basis, threshold, float(unusual_share), float(boost), int(seed),
                   int(n_fit), int(n_threshold), digest, bool(region_marks))

    def scores(self, x: np.ndarray, step: float = 1.0 / 255.0) -> np.ndarray:
        """Each input's residual outside the profile's components, computed on its canonical form."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape[1:] != self.input_shape:
            raise MarkingProfileError(f"the marking profile was calibrated on inputs of shape {self.input_shape}, "
                                      f"not {x.shape[1:]}; recalibrate with `tracemark responses calibrate`")
        return _residuals((np.rint(x / step) * step).reshape(len(x), -1), self.mean, self.components)

    def typical_rate(self, rate: float) -> float:
        """The rate of typical inputs, for an average ``rate`` over in-distribution traffic."""
        return rate / (1.0 + self.unusual_share * (self.boost - 1.0))

    def unusual_rate(self, rate: float) -> float:
        """The rate of unusual inputs, for an average ``rate`` over in-distribution traffic."""
        return min(MAX_RATE, self.boost * self.typical_rate(rate))

    def rates(self, x: np.ndarray, rate: float, step: float = 1.0 / 255.0) -> np.ndarray:
        """Each input's marking rate: unusual or typical."""
        return np.where(self.scores(x, step) > self.threshold, self.unusual_rate(rate), self.typical_rate(rate))

    def to_dict(self) -> dict[str, Any]:
        extra = {"region_marks": True} if self.region_marks else {}  # absent: per-input marks (documents made before)
        return {**extra, "format": PROFILE_FORMAT, "version": PROFILE_VERSION, "input_shape": list(self.input_shape),
                "components_shape": list(self.components.shape), "mean_f32le_b64": _encode(self.mean),
                "components_f32le_b64": _encode(self.components), "threshold": self.threshold,
                "unusual_share": self.unusual_share, "boost": self.boost, "seed": self.seed, "n_fit": self.n_fit,
                "n_threshold": self.n_threshold, "data_sha256": self.data_sha256}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "MarkingProfile":
        try:
            if raw.get("format") != PROFILE_FORMAT or raw.get("version") != PROFILE_VERSION:
                raise MarkingProfileError(f"not a {PROFILE_FORMAT} v{PROFILE_VERSION} document")
            shape = tuple(int(d) for d in raw["input_shape"])
            return cls(shape, _decode(raw["mean_f32le_b64"], (math.prod(shape),)),
                       _decode(raw["components_f32le_b64"], tuple(int(d) for d in raw["components_shape"])),
                       float(raw["threshold"]), float(raw["unusual_share"]), float(raw["boost"]), int(raw["seed"]),
                       int(raw["n_fit"]), int(raw["n_threshold"]), str(raw["data_sha256"]), raw.get("region_marks", False) is True)
        except (KeyError, TypeError, ValueError) as exc:
            raise MarkingProfileError(f"malformed marking profile: {exc}") from exc

    @property
    def sha256(self) -> str:
        """SHA-256 of the profile's canonical JSON: which profile marked the answers (safe to log)."""
        return hashlib.sha256(canonical_json(self.to_dict())).hexdigest()

    def summary(self, rate: float) -> dict[str, Any]:
        """What the profile does at an average ``rate``: the two rates, the share, and how it was made."""
        return {"sha256": self.sha256, "unusual_share": self.unusual_share, "boost": self.boost,
                "typical_rate": self.typical_rate(rate), "unusual_rate": self.unusual_rate(rate), "threshold": self.threshold,
                "components": int(self.components.shape[0]), "seed": self.seed, "n_fit": self.n_fit,
                "n_threshold": self.n_threshold, "data_sha256": self.data_sha256, "region_marks": self.region_marks}


def _check_split(unusual_share: float, boost: float) -> None:
    if not 0.0 < unusual_share < 0.5 or not (math.isfinite(boost) and boost >= 1.0):
        raise MarkingProfileError(f"unusual share must be in (0, 0.5) and boost >= 1, not {unusual_share} and {boost}")


def _residuals(flat: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    centred = flat - mean
    return np.sqrt(((centred - (centred @ basis.T) @ basis) ** 2).sum(axis=1))


__all__ = ["MarkingProfile", "DEFAULT_UNUSUAL_SHARE", "DEFAULT_BOOST", "DEFAULT_COMPONENTS"]
