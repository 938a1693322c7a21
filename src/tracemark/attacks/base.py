"""What every removal attack shares: the thief's resources, the attack interface, the stolen result.

An attack takes the victim (a torch module when the thief holds the weights, or any
:class:`~tracemark.targets.Target` when it only has an API) and the thief's own data, and
returns what the thief ends up with: a torch module, or a Target for attacks that act at query
time. Attacks never see the watermark key.
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from tracemark.errors import TracemarkError
from tracemark.targets.base import Target
from tracemark.targets.local import TorchTarget

Access = Literal["weights", "api"]
KINDS = ("finetune", "prune", "quantize", "noise", "distill", "extract", "transform")


class AttackError(TracemarkError):
    """An attack cannot run with what it was given (no weights, no labels, no query pool)."""


@dataclass(frozen=True)
class ThiefData:
    """The thief's own resources.

    ``x`` are in-domain images (float32 N×C×H×W in [0, 1]); ``y`` their labels when the
    thief has them (fine-tuning needs them, extraction does not); ``ood_x`` out-of-domain
    images for extraction with an out-of-domain query pool. ``seed`` makes every attack
    that draws randomness reproducible.
    """

    x: np.ndarray
    y: np.ndarray | None = None
    ood_x: np.ndarray | None = None
    seed: int = 0

    def labelled(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` labelled images; raises :class:`AttackError` if the thief has no labels."""
        if self.y is None:
            raise AttackError("this attack needs the thief's labelled data (ThiefData.y)")
        return self.x[:n], self.y[:n]

    def pool(self, which: str, n: int | None = None) -> np.ndarray:
        """The first ``n`` images of the in-domain (``"in"``) or out-of-domain (``"ood"``) pool."""
        if which == "in":
            return self.x[:n]
        if which == "ood":
            if self.ood_x is None:
                raise AttackError("no out-of-domain pool: give ThiefData.ood_x")
            return self.ood_x[:n]
        raise AttackError(f"unknown query pool {which!r}: use 'in' or 'ood'")


@dataclass
class Stolen:
    """What an attack leaves the thief with: a Target to query, and the module behind it if any."""

    target: Target
    model: nn.Module | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Attack(abc.ABC):
    """A removal attack with declared parameters.

    Subclasses set ``kind`` (one of :data:`KINDS`) and ``access`` (``"weights"`` if the thief
    needs the model's parameters, ``"api"`` if answers suffice), expose their parameters via
    :meth:`params` and a single number :attr:`strength` for plots, and implement :meth:`run`.
    """

    kind: ClassVar[str]
    access: ClassVar[Access] = "weights"

    @property
    @abc.abstractmethod
    def strength(self) -> float:
        """One number that grows with the attack's strength (a rate, a sigma, a budget)."""

    @abc.abstractmethod
    def params(self) -> dict[str, Any]:
        """The attack's parameters, JSON-able."""

    @abc.abstractmethod
    def run(self, victim: nn.Module | Target, thief: ThiefData) -> Stolen:
        """Attack ``victim`` with the thief's resources; never modifies ``victim``."""

    @property
    def name(self) -> str:
        """A short label such as ``prune-magnitude(rate=0.5)``."""
        inner = ",".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.label}({inner})"

    @property
    def label(self) -> str:
        """The attack's family-specific name without parameters."""
        return self.kind

    def __str__(self) -> str:
        return self.name


def require_module(victim: nn.Module | Target, attack: Attack) -> nn.Module:
    """The victim's weights as a private deep copy; raises if the thief only has an API."""
    if isinstance(victim, TorchTarget) and isinstance(victim.module, nn.Module):
        victim = victim.module
    if not isinstance(victim, nn.Module):
        raise AttackError(f"{attack.name} needs the model's weights, but the victim is only an API ({victim})")
    clone = copy.deepcopy(victim)
    clone.eval()
    return clone


def as_target(victim: nn.Module | Target) -> Target:
    """Wrap a module as a Target; pass Targets through."""
    return victim if isinstance(victim, Target) else TorchTarget(victim, description="victim model")


def stolen_module(model: nn.Module, description: str, **info: Any) -> Stolen:
    """A :class:`Stolen` around a torch module."""
    model.eval()
    return Stolen(TorchTarget(model, description=description), model, dict(info))


def prunable_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The weight tensors of every Conv and Linear layer (biases excluded), in module order."""
    return [
        (f"{name}.weight", module.weight)
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
    ]


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU torch generator at ``seed``."""
    return torch.Generator().manual_seed(int(seed))
