"""Fine-tuning attacks (Adi et al. 2018; the SoK's FTLL, FTAL, RTLL, RTAL) on the thief's labelled data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from tracemark.attacks.base import Attack, AttackError, Stolen, ThiefData, require_module, stolen_module
from tracemark.targets.base import Target
from tracemark.training import fit

Mode = Literal["FTLL", "FTAL", "RTLL", "RTAL"]
MODES: tuple[str, ...] = ("FTLL", "FTAL", "RTLL", "RTAL")


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's output layer: its last ``nn.Linear``."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise AttackError("the model has no nn.Linear output layer to fine-tune or re-initialise")
    return linears[-1]


@dataclass(frozen=True)
class FineTune(Attack):
    """Fine-tune the stolen weights on ``n_samples`` of the thief's labelled images.

    ``FTLL`` trains the last layer only; ``FTAL`` all layers; ``RTLL`` re-initialises the last
    layer and trains only it; ``RTAL`` re-initialises the last layer and trains all layers.
    A Dataset thief is read in batches; training runs on ``ThiefData.device``.
    """

    mode: Mode = "FTAL"
    n_samples: int = 5000
    epochs: int = 3
    lr: float = 5e-4
    batch_size: int = 64

    kind = "finetune"
    access = "weights"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise AttackError(f"unknown fine-tuning mode {self.mode!r}; use one of {', '.join(MODES)}")

    @property
    def label(self) -> str:
        return self.mode

    @property
    def strength(self) -> float:
        return float(self.n_samples * self.epochs)

    def params(self) -> dict[str, Any]:
        return {"n_samples": self.n_samples, "epochs": self.epochs, "lr": self.lr}

    def run(self, victim: nn.Module | Target, thief: ThiefData) -> Stolen:
        model = require_module(victim, self)
        train = thief.labelled_set(self.n_samples)
        head = last_linear(model)
        if self.mode.startswith("RT"):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(thief.seed)
                head.reset_parameters()
        if self.mode.endswith("LL"):
            for p in model.parameters():
                p.requires_grad_(False)
            for p in head.parameters():
                p.requires_grad_(True)
        report = fit(model, train, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=thief.seed,
                     device=thief.device, num_workers=thief.num_workers)
        for p in model.parameters():
            p.requires_grad_(True)
        return stolen_module(model, f"{self.name} of the victim", samples=len(train), seconds=report.seconds)
