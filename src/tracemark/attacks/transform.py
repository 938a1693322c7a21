"""Input transformations at query time: the thief serves the stolen model behind a pre-processor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from torch.nn import functional as F

from tracemark.attacks.base import Attack, AttackError, Stolen, ThiefData, as_target
from tracemark.targets.base import Answers, Target

Transform = Literal["noise", "blur", "resample", "bitdepth"]
TRANSFORMS: tuple[str, ...] = ("noise", "blur", "resample", "bitdepth")


def gaussian_noise(x: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Add N(0, sigma²) pixel noise, clipped to [0, 1]."""
    noise = np.random.default_rng(seed).normal(0.0, sigma, size=x.shape)
    return np.clip(x + noise, 0.0, 1.0).astype(np.float32)


def blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each image with standard deviation ``sigma`` pixels."""
    return ndimage.gaussian_filter(x, sigma=(0, 0, sigma, sigma), mode="nearest").astype(np.float32)


def resample(x: np.ndarray, factor: float) -> np.ndarray:
    """Shrink by ``factor`` (area averaging) and enlarge back (bilinear)."""
    h, w = x.shape[2:]
    small = (max(1, round(h / factor)), max(1, round(w / factor)))
    t = F.interpolate(torch.from_numpy(x), size=small, mode="area")
    return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1).numpy()


def bit_depth(x: np.ndarray, bits: int) -> np.ndarray:
    """Quantise pixel values to ``bits`` bits."""
    levels = (1 << int(bits)) - 1
    return (np.round(x * levels) / levels).astype(np.float32)


class TransformedTarget(Target):
    """``inner`` queried through ``transform``: every input is altered before the model sees it."""

    def __init__(self, inner: Target, transform: Callable[[np.ndarray], np.ndarray], description: str):
        self.inner = inner
        self.transform = transform
        self.description = description
        self.input_shape = inner.input_shape
        self.num_classes = inner.num_classes

    def _answer(self, x: np.ndarray) -> Answers:
        return self.inner.predict(self.transform(x))


@dataclass(frozen=True)
class InputTransform(Attack):
    """Pre-process every query: ``noise`` (sigma), ``blur`` (sigma px), ``resample`` (factor) or ``bitdepth`` (bits)."""

    transform: Transform = "noise"
    amount: float = 0.1

    kind = "transform"
    access = "api"

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise AttackError(f"unknown input transform {self.transform!r}; use one of {', '.join(TRANSFORMS)}")

    @property
    def label(self) -> str:
        return f"input-{self.transform}"

    @property
    def strength(self) -> float:
        # fewer bits is stronger; report 8 - bits so that larger is stronger everywhere
        return 8.0 - self.amount if self.transform == "bitdepth" else float(self.amount)

    def params(self) -> dict[str, Any]:
        name = {"noise": "sigma", "blur": "sigma", "resample": "factor", "bitdepth": "bits"}[self.transform]
        return {name: self.amount}

    def function(self, seed: int) -> Callable[[np.ndarray], np.ndarray]:
        """The pre-processing function this attack applies."""
        if self.transform == "noise":
            return lambda x: gaussian_noise(x, self.amount, seed)
        if self.transform == "blur":
            return lambda x: blur(x, self.amount)
        if self.transform == "resample":
            return lambda x: resample(x, self.amount)
        return lambda x: bit_depth(x, int(self.amount))

    def run(self, victim: nn.Module | Target, thief: ThiefData) -> Stolen:
        inner = as_target(victim)
        wrapped = TransformedTarget(inner, self.function(thief.seed), f"{inner} behind {self.name}")
        model = victim if isinstance(victim, nn.Module) else None
        return Stolen(wrapped, model)
