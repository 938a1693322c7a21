"""Trigger augmentation for training-time marks: show the model its triggers the way a thief's pre-processor would.

Wraps a :class:`~tracemark.embedding.TriggerMixDataset` and, for trigger items only, applies a
random query-time transformation (blur, down/up-sampling, pixel noise, bit-depth reduction or
none), so the learned trigger feature survives those transformations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from tracemark.attacks.transform import bit_depth, blur, gaussian_noise, resample

if TYPE_CHECKING:
    from tracemark.embedding.mixing import TriggerMixDataset


def random_transform(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One image batch under a random transformation of the strengths the lab's suite uses (or slightly more)."""
    choice = int(rng.integers(5))
    if choice == 0:
        return x
    if choice == 1:
        return blur(x, float(rng.uniform(0.3, 1.6)))
    if choice == 2:
        return resample(x, float(rng.uniform(1.3, 2.6)))
    if choice == 3:
        return gaussian_noise(x, float(rng.uniform(0.02, 0.25)), int(rng.integers(2**31)))
    return bit_depth(x, int(rng.integers(1, 5)))


class TransformedTriggers(Dataset):
    """``mixed`` with every trigger item passed through :func:`random_transform` (seeded by epoch and index)."""

    def __init__(self, mixed: TriggerMixDataset, seed: int = 0):
        self.mixed = mixed
        self.seed = int(seed)

    def set_epoch(self, epoch: int) -> None:
        """Vary the augmentation between epochs (and the mixed dataset's own shifts)."""
        self.mixed.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.mixed)

    def __getitem__(self, index: int):
        x, y = self.mixed[index]
        if index < self.mixed.n_base:
            return x, y
        rng = np.random.default_rng((self.seed, self.mixed.epoch, index))
        out = random_transform(x.numpy()[None], rng)[0]
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)), y
