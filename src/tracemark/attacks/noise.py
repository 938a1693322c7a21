"""Weight noise: add Gaussian noise scaled to each layer's own weight spread."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tracemark.attacks.base import Attack, Stolen, ThiefData, require_module, seeded_generator, stolen_module
from tracemark.targets.base import Target


@dataclass(frozen=True)
class WeightNoise(Attack):
    """Add N(0, (sigma · std(W))²) to every parameter tensor W (weights and biases)."""

    sigma: float = 0.1

    kind = "noise"
    access = "weights"

    @property
    def label(self) -> str:
        return "weight-noise"

    @property
    def strength(self) -> float:
        return float(self.sigma)

    def params(self) -> dict[str, Any]:
        return {"sigma": self.sigma}

    def run(self, victim: nn.Module | Target, thief: ThiefData) -> Stolen:
        model = require_module(victim, self)
        gen = seeded_generator(thief.seed)
        with torch.no_grad():
            for p in model.parameters():
                spread = p.std() if p.numel() > 1 else p.abs().mean()
                p.add_(torch.randn(p.shape, generator=gen).to(p.device) * self.sigma * spread)  # drawn on the CPU
        return stolen_module(model, f"{self.name} of the victim")
