"""A Dataset that mixes a key's triggers into any training loop.

It is an ordinary map-style dataset, so ``DataLoader``, ``DistributedSampler`` (DDP) and
Lightning use it unchanged: indices past the base dataset's length map onto the triggers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from tracemark.keys.key import WatermarkKey
from tracemark.keys.triggerset import TriggerSet


class TriggerMixDataset(Dataset):
    """``base`` followed by the key's triggers, repeated to make up ``ratio`` of the base size.

    Each item is ``(x, y)`` as a float32 tensor and an int64 tensor, like ``TensorDataset``.
    ``augment`` applies a small deterministic random shift (±1 pixel, from the index and
    ``epoch``) to trigger items, which helps the mark survive input transformations;
    call :meth:`set_epoch` like a ``DistributedSampler`` to vary it.
    """

    def __init__(self, base: Dataset, key: WatermarkKey | TriggerSet, ratio: float = 0.05, augment: bool = False):
        if ratio <= 0:
            raise ValueError("ratio must be positive")
        triggers = key.triggers() if isinstance(key, WatermarkKey) else key
        self.base = base
        self.trigger_x = torch.from_numpy(triggers.inputs)
        self.trigger_y = torch.from_numpy(triggers.labels)
        self.n_base = len(base)  # type: ignore[arg-type]
        self.n_trigger_items = max(len(triggers), math.ceil(ratio * self.n_base))
        self.augment = augment
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Vary the trigger augmentation between epochs."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n_base + self.n_trigger_items

    def __getitem__(self, index: int):
        if index < 0:
            index += len(self)
        if index < self.n_base:
            x, y = self.base[index]
            return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)
        j = (index - self.n_base) % len(self.trigger_y)
        x = self.trigger_x[j]
        if self.augment:
            shift = np.random.default_rng((self.epoch, index)).integers(-1, 2, size=2)
            x = torch.roll(x, shifts=(int(shift[0]), int(shift[1])), dims=(1, 2))
        return x, self.trigger_y[j]
