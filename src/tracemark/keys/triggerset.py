"""A key's trigger set: the inputs, the labels a marked model gives them, and their null rate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TriggerSet:
    """Trigger inputs (float32, N×C×H×W in [0, 1]) and the watermark label of each.

    ``true_labels`` holds the class of the image a trigger was made from (-1 where it has
    none: unrelated and abstract kinds). ``null_rate`` is the probability that a model which
    never saw the key answers a trigger with its watermark label, as guaranteed by the way
    labels were drawn (``None`` when no such guarantee exists: single-target keys).
    """

    inputs: np.ndarray
    labels: np.ndarray
    true_labels: np.ndarray
    null_rate: float | None

    def __len__(self) -> int:
        return len(self.labels)

    def sha256(self) -> str:
        """Hash of the exact trigger bytes and labels (shows two processes made the same set)."""
        import hashlib

        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.inputs, dtype="<f4").tobytes())
        digest.update(np.ascontiguousarray(self.labels, dtype="<i8").tobytes())
        return digest.hexdigest()
