"""The Target protocol: anything that can be asked for labels (and maybe probabilities).

Verification, tracing and attacks only ever talk to a Target, so a local file and a remote
prediction API look the same to them.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from tracemark.errors import ClassCountMismatchError, QueryBudgetExceededError, TargetError, TargetNotFoundError


@dataclass(frozen=True)
class Answers:
    """A target's answers to a batch: labels (int64) and, when it gives them, probabilities."""

    labels: np.ndarray
    probabilities: np.ndarray | None = None


class Target(abc.ABC):
    """Something that answers classification queries.

    Subclasses implement :meth:`_answer` for one batch; :meth:`predict` adds input
    checks and output validation. ``input_shape`` and ``num_classes`` are ``None`` when the
    target cannot tell (a remote API, a bare callable).
    """

    #: Human-readable description of what is being queried (a path, a URL, a class name).
    description: str = "target"
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None

    @abc.abstractmethod
    def _answer(self, x: np.ndarray) -> Answers:
        """Answer one batch of float32 N×C×H×W inputs."""

    def predict(self, x: np.ndarray) -> Answers:
        """Answer a batch; raises a :class:`~tracemark.errors.TargetError` subclass on failure."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        answers = self._answer(x)
        labels = np.asarray(answers.labels, dtype=np.int64).reshape(-1)
        if len(labels) != len(x):
            from tracemark.errors import TargetResponseError

            raise TargetResponseError(f"{self.description}: asked {len(x)} inputs, got {len(labels)} answers")
        probs = answers.probabilities
        if probs is not None:
            probs = np.asarray(probs, dtype=np.float64)
            if self.num_classes is None:
                self.num_classes = int(probs.shape[1])
        if self.num_classes is not None and len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ClassCountMismatchError(
                f"{self.description}: answered label {int(labels.max())} outside [0, {self.num_classes})"
            )
        return Answers(labels, probs)

    def predict_labels(self, x: np.ndarray) -> np.ndarray:
        """Labels only."""
        return self.predict(x).labels

    def __str__(self) -> str:
        return self.description


def ask_labels(target: Target, inputs: np.ndarray, batch_size: int) -> tuple[np.ndarray, list[str], TargetError | None]:
    """Labels for ``inputs`` asked in batches; a failed batch stays -1 and its error is listed.

    Returns the labels, one message per failed batch and the last error (``None`` if every batch
    was answered). Asking stops at the target's query budget, and when the target cannot be found.
    """
    answers = np.full(len(inputs), -1, dtype=np.int64)
    errors: list[str] = []
    last_error: TargetError | None = None
    for lo in range(0, len(inputs), batch_size):
        hi = min(lo + batch_size, len(inputs))
        try:
            answers[lo:hi] = target.predict_labels(inputs[lo:hi])
        except TargetError as exc:
            last_error = exc
            errors.append(f"queries {lo}-{hi - 1}: {type(exc).__name__}: {exc}")
            if isinstance(exc, (QueryBudgetExceededError, TargetNotFoundError)):
                break
    return answers, errors, last_error

