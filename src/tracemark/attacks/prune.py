"""Global unstructured pruning: zero the smallest-magnitude (or randomly chosen) weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from tracemark.attacks.base import Attack, AttackError, Stolen, ThiefData, prunable_weights, require_module, seeded_generator, stolen_module
from tracemark.targets.base import Target

Method = Literal["magnitude", "random"]


def prune_weights(model: nn.Module, rate: float, method: Method = "magnitude", seed: int = 0) -> int:
    """Set exactly ``round(rate * n)`` of the model's ``n`` Conv/Linear weights to zero, in place.

    ``magnitude`` picks the smallest absolute values over all layers together (global pruning);
    ``random`` picks uniformly at random. Returns how many weights were zeroed.
    """
    if not 0.0 <= rate <= 1.0:
        raise AttackError("pruning rate must be in [0, 1]")
    if method not in ("magnitude", "random"):
        raise AttackError(f"unknown pruning method {method!r}; use 'magnitude' or 'random'")
    weights = [w for _, w in prunable_weights(model)]
    if not weights:
        raise AttackError("the model has no Conv or Linear weights to prune")
    flat = torch.cat([w.detach().reshape(-1) for w in weights])
    k = int(round(rate * flat.numel()))
    if k == 0:
        return 0
    if method == "magnitude":
        chosen = torch.argsort(flat.abs(), stable=True)[:k]
    else:
        chosen = torch.randperm(flat.numel(), generator=seeded_generator(seed))[:k]
    mask = torch.ones_like(flat, dtype=torch.bool)
    mask[chosen] = False
    offset = 0
    with torch.no_grad():
        for w in weights:
            n = w.numel()
            w.mul_(mask[offset : offset + n].reshape(w.shape).to(w.dtype))
            offset += n
    return k


@dataclass(frozen=True)
class Prune(Attack):
    """Zero a fraction ``rate`` of all Conv/Linear weights (global magnitude or random)."""

    rate: float = 0.5
    method: Method = "magnitude"

    kind = "prune"
    access = "weights"

    @property
    def label(self) -> str:
        return f"prune-{self.method}"

    @property
    def strength(self) -> float:
        return float(self.rate)

    def params(self) -> dict[str, Any]:
        return {"rate": self.rate}

    def run(self, victim: nn.Module | Target, thief: ThiefData) -> Stolen:
        model = require_module(victim, self)
        zeroed = prune_weights(model, self.rate, self.method, thief.seed)
        return stolen_module(model, f"{self.name} of the victim", zeroed=zeroed)
