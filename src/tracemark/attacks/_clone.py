"""Shared by extraction and distillation: ask a Target in chunks, and size a fresh model."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from tracemark.attacks.base import AttackError, Images, image_shape
from tracemark.data.batches import batches, is_stream, item_pair
from tracemark.data.models import build_model
from tracemark.targets.base import Answers, Target

QUERY_CHUNK = 1000


def _chunks(x: Images, num_workers: int):
    if is_stream(x):
        for xb, _ in batches(x, batch_size=QUERY_CHUNK, num_workers=num_workers):  # type: ignore[arg-type]
            yield xb.numpy()
        return
    for start in range(0, len(x), QUERY_CHUNK):
        yield x[start : start + QUERY_CHUNK]  # type: ignore[index]


def query(target: Target, x: Images, need_probabilities: bool = False, num_workers: int = 0) -> Answers:
    """The target's answers to ``x`` (an array, or a Dataset read batch by batch), ``QUERY_CHUNK`` inputs at a time."""
    labels, probs = [], []
    for chunk in _chunks(x, num_workers):
        answers = target.predict(np.ascontiguousarray(chunk, dtype=np.float32) if is_stream(x) else chunk)
        if need_probabilities and answers.probabilities is None:
            raise AttackError(f"{target} answers labels only; this attack needs probabilities")
        labels.append(answers.labels)
        probs.append(answers.probabilities)
    if not labels:
        raise AttackError("the query pool is empty")
    joined = np.concatenate(probs) if all(p is not None for p in probs) else None
    return Answers(np.concatenate(labels), joined)


class Answered(Dataset):
    """The pool's images (read one by one from a Dataset) paired with the target's answers to them."""

    def __init__(self, pool: Dataset, answers: np.ndarray):
        self.pool, self.answers = pool, torch.from_numpy(np.ascontiguousarray(answers))

    def __len__(self) -> int:
        return len(self.answers)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return item_pair(self.pool[index])[0], self.answers[index]


def fresh_model(arch: str, x: Images, target: Target, answers: Answers, num_classes: int | None, seed: int) -> nn.Module:
    """A newly initialised ``arch`` for inputs shaped like ``x`` and the target's class count."""
    k = num_classes or target.num_classes
    if k is None:
        k = answers.probabilities.shape[1] if answers.probabilities is not None else int(answers.labels.max()) + 1
    return build_model(arch, image_shape(x), int(k), seed=seed)  # type: ignore[arg-type]
