"""Turning extraction resistance on in the server: the monitor and the marker as one answer hook."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tracemark.serve.clients import Client
from tracemark.serve.config import ServeConfig
from tracemark.serve.hooks import AnswerHook, admit, close
from tracemark.targets.base import Answers


@dataclass(frozen=True)
class HookChain:
    """Several answer hooks applied in order, each to the previous one's answers."""

    hooks: Sequence[AnswerHook]

    def admit(self, client: Client, n_inputs: int) -> None:
        """Every hook's pre-model check, in order."""
        for hook in self.hooks:
            admit(hook, client, n_inputs)

    def __call__(self, client: Client, inputs: np.ndarray, answers: Answers) -> Answers:
        for hook in self.hooks:
            answers = hook(client, inputs, answers)
        return answers

    def close(self) -> None:
        """Close every hook that can be closed (the response marker adds its answered counts to the store)."""
        for hook in self.hooks:
            close(hook)


def hook_from_config(config: ServeConfig) -> AnswerHook | None:
    """The stealing monitor (sees the model's own labels) then the response marker (with the store's marking profile,
    if one was calibrated, and the per-client budget ``config.marking_cap``), as ``config`` asks; ``None`` if neither."""
    hooks: list[AnswerHook] = []
    if config.monitor is not None:
        from tracemark.extraction.monitor import AlertStore, StealingMonitor
        from tracemark.ledger import configured_ledger

        hooks.append(StealingMonitor(config.monitor, AlertStore(config.alerts_db or config.audit_db), configured_ledger()))
    if config.marking:
        from tracemark.extraction.marking import MarkingSecret, ResponseMarker
        from tracemark.extraction.store import ResponseStore

        store = ResponseStore(config.responses_db)
        hooks.append(ResponseMarker(MarkingSecret.resolve(config.marking_secret), store, config.marking_rate,
                                    config.marking_step, store.profile(), config.marking_cap))
    if not hooks:
        return None
    return hooks[0] if len(hooks) == 1 else HookChain(tuple(hooks))


__all__ = ["HookChain", "hook_from_config"]
