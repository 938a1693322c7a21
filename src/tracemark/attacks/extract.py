"""Label-only model extraction: train a fresh model on the target's answers to the thief's own images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from tracemark.attacks._clone import fresh_model, query
from tracemark.attacks.base import Attack, Stolen, ThiefData, as_target, stolen_module
from tracemark.targets.base import Target
from tracemark.training import fit, to_tensor_dataset

Pool = Literal["in", "ood"]


@dataclass(frozen=True)
class Extract(Attack):
    """Query ``n_queries`` images of the thief's in-domain (``pool="in"``) or out-of-domain
    (``"ood"``) pool, keep only the answered labels, and train a fresh ``arch`` on them.

    Works through any Target, so a remote HTTP API can be cloned the same way.
    """

    arch: str = "small_cnn"
    pool: Pool = "in"
    n_queries: int = 5000
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    num_classes: int | None = None

    kind = "extract"
    access = "api"

    @property
    def label(self) -> str:
        return f"extract-{'in-domain' if self.pool == 'in' else 'out-of-domain'}"

    @property
    def strength(self) -> float:
        return float(self.n_queries)

    def params(self) -> dict[str, Any]:
        return {"arch": self.arch, "n_queries": self.n_queries, "epochs": self.epochs}

    def run(self, victim: nn.Module | Target, thief: ThiefData) -> Stolen:
        target = as_target(victim)
        x = thief.pool(self.pool, self.n_queries)
        answers = query(target, x)
        clone = fresh_model(self.arch, x, target, answers, self.num_classes, thief.seed)
        report = fit(clone, to_tensor_dataset(x, answers.labels), epochs=self.epochs, lr=self.lr,
                     batch_size=self.batch_size, seed=thief.seed)
        return stolen_module(clone, f"{self.name} clone", queries=len(x), seconds=report.seconds)
