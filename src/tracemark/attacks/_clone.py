"""Shared by extraction and distillation: ask a Target in chunks, and size a fresh model."""

from __future__ import annotations

import numpy as np
from torch import nn

from tracemark.attacks.base import AttackError
from tracemark.data.models import build_model
from tracemark.targets.base import Answers, Target

QUERY_CHUNK = 1000


def query(target: Target, x: np.ndarray, need_probabilities: bool = False) -> Answers:
    """The target's answers to ``x``, asked ``QUERY_CHUNK`` inputs at a time."""
    labels, probs = [], []
    for start in range(0, len(x), QUERY_CHUNK):
        answers = target.predict(x[start : start + QUERY_CHUNK])
        if need_probabilities and answers.probabilities is None:
            raise AttackError(f"{target} answers labels only; this attack needs probabilities")
        labels.append(answers.labels)
        probs.append(answers.probabilities)
    if not labels:
        raise AttackError("the query pool is empty")
    joined = np.concatenate(probs) if all(p is not None for p in probs) else None
    return Answers(np.concatenate(labels), joined)


def fresh_model(arch: str, x: np.ndarray, target: Target, answers: Answers, num_classes: int | None, seed: int) -> nn.Module:
    """A newly initialised ``arch`` for inputs shaped like ``x`` and the target's class count."""
    k = num_classes or target.num_classes
    if k is None:
        k = answers.probabilities.shape[1] if answers.probabilities is not None else int(answers.labels.max()) + 1
    return build_model(arch, tuple(int(d) for d in x.shape[1:]), int(k), seed=seed)  # type: ignore[arg-type]
