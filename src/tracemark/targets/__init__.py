"""Targets: anything that answers classification queries (local models or remote APIs)."""

from tracemark.targets.base import Answers, Target, ask_labels
from tracemark.targets.loading import load_target
from tracemark.targets.local import CallableTarget, OnnxTarget, TorchTarget, exported_target

__all__ = ["Answers", "Target", "ask_labels", "TorchTarget", "OnnxTarget", "CallableTarget", "exported_target", "load_target", "HttpTarget"]


def __getattr__(name: str):  # HttpTarget pulls in httpx only when used
    if name == "HttpTarget":
        from tracemark.targets.http import HttpTarget

        return HttpTarget
    raise AttributeError(name)
