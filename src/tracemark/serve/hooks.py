"""The place in the predict path where answers can be changed per client (e.g. response marking)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from tracemark.serve.clients import Client
from tracemark.targets.base import Answers


class AnswerHook(Protocol):
    """Called with the client, its validated float32 inputs (N, *input_shape) and the model's raw
    answers (labels and full probabilities) before the output policy is applied; returns the answers
    to send. The policy then limits what the client sees, and the audit log records the result.
    A hook that changes a label should change its probability row to match."""

    def __call__(self, client: Client, inputs: np.ndarray, answers: Answers) -> Answers: ...


__all__ = ["AnswerHook"]
