"""Distillation on soft labels: train a fresh student on the target's probabilities for the thief's images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from tracemark.attacks._clone import fresh_model, query
from tracemark.attacks.base import Attack, Stolen, ThiefData, as_target, seeded_generator, stolen_module
from tracemark.targets.base import Target


def soften(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Re-temper probabilities: softmax(log p / T) (T > 1 spreads the mass, as in Hinton et al. 2015)."""
    logits = np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def train_on_soft_labels(student: nn.Module, x: np.ndarray, soft: np.ndarray, *, temperature: float, epochs: int,
                         lr: float, batch_size: int, seed: int) -> None:
    """Minimise T² · KL(soft ‖ student at temperature T) with Adam; shuffling is seeded."""
    dataset = TensorDataset(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(soft))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=seeded_generator(seed))
    optimiser = torch.optim.Adam(student.parameters(), lr=lr)
    student.train()
    for _ in range(epochs):
        for xb, pb in loader:
            optimiser.zero_grad(set_to_none=True)
            log_q = F.log_softmax(student(xb) / temperature, dim=1)
            loss = F.kl_div(log_q, pb, reduction="batchmean") * temperature**2
            loss.backward()
            optimiser.step()
    student.eval()


@dataclass(frozen=True)
class Distill(Attack):
    """Ask the target's probabilities on ``n_queries`` thief images; train a fresh ``arch`` to match them."""

    arch: str = "small_cnn"
    pool: str = "in"
    n_queries: int = 5000
    temperature: float = 3.0
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    num_classes: int | None = None

    kind = "distill"
    access = "api"

    @property
    def label(self) -> str:
        return "distill"

    @property
    def strength(self) -> float:
        return float(self.n_queries)

    def params(self) -> dict[str, Any]:
        return {"arch": self.arch, "n_queries": self.n_queries, "T": self.temperature, "epochs": self.epochs}

    def run(self, victim: nn.Module | Target, thief: ThiefData) -> Stolen:
        target = as_target(victim)
        x = thief.pool(self.pool, self.n_queries)
        answers = query(target, x, need_probabilities=True)
        student = fresh_model(self.arch, x, target, answers, self.num_classes, thief.seed)
        assert answers.probabilities is not None
        train_on_soft_labels(student, x, soften(answers.probabilities, self.temperature), temperature=self.temperature,
                             epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=thief.seed)
        return stolen_module(student, f"{self.name} student", queries=len(x))
