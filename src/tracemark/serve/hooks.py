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


def admit(hook: object, client: Client, n_inputs: int) -> None:
    """Run ``hook.admit(client, n_inputs)`` if the hook has one: a check before the model runs, which
    refuses a request by raising a :class:`~tracemark.serve.errors.ServeError` (e.g. a throttled client's 429)
    so that refused requests cost no forward pass."""
    check = getattr(hook, "admit", None)
    if check is not None:
        check(client, n_inputs)


def close(hook: object) -> None:
    """Run ``hook.close()`` if the hook has one: what it must do when the server worker stops (the response
    marker adds the answered inputs it counted to the store)."""
    done = getattr(hook, "close", None)
    if done is not None:
        done()


__all__ = ["AnswerHook", "admit", "close"]
