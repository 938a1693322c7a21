"""Label-only model extraction: train a fresh model on the target's answers to the thief's own images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from torch import nn

from tracemark.attacks._clone import Answered, fresh_model, query
from tracemark.attacks.base import Attack, Stolen, ThiefData, as_target, check_pool_shape, stolen_module
from tracemark.data.batches import is_stream
from tracemark.targets.base import Target
from tracemark.training import fit, to_tensor_dataset

Pool = Literal["in", "ood"]


@dataclass(frozen=True)
class Extract(Attack):
    """Query ``n_queries`` images of the thief's in-domain (``pool="in"``) or out-of-domain
    (``"ood"``) pool, keep only the answered labels, and train a fresh ``arch`` on them.

    Works through any Target, so a remote HTTP API can be cloned the same way. A Dataset pool
    is streamed: asked in chunks, then read again batch by batch to train the clone (on
    ``ThiefData.device``); only the answered labels are kept in memory.
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
        x = thief.pool_set(self.pool, self.n_queries)
        check_pool_shape(x, target, "query")
        answers = query(target, x, num_workers=thief.num_workers)
        clone = fresh_model(self.arch, x, target, answers, self.num_classes, thief.seed)
        train = Answered(x, np.asarray(answers.labels, dtype=np.int64)) if is_stream(x) else to_tensor_dataset(x, answers.labels)  # type: ignore[arg-type]
        report = fit(clone, train, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=thief.seed,
                     device=thief.device, num_workers=thief.num_workers)
        return stolen_module(clone, f"{self.name} clone", queries=len(x), seconds=report.seconds)
