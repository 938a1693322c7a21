"""Distillation on soft labels: train a fresh student on the target's probabilities for the thief's images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tracemark.attacks._clone import Answered, fresh_model, query
from tracemark.attacks.base import Attack, Images, Stolen, ThiefData, as_target, check_pool_shape, seeded_generator, stolen_module
from tracemark.data.batches import is_stream
from tracemark.data.devices import placed
from tracemark.targets.base import Target


def soften(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Re-temper probabilities: softmax(log p / T) (T > 1 spreads the mass, as in Hinton et al. 2015)."""
    logits = np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def train_on_soft_labels(student: nn.Module, x: Images, soft: np.ndarray, *, temperature: float, epochs: int,
                         lr: float, batch_size: int, seed: int, device: str | torch.device | None = None,
                         num_workers: int = 0) -> None:
    """Minimise T² · KL(soft ‖ student at temperature T) with Adam; shuffling is seeded.

    ``x`` is an image array or a Dataset (read batch by batch); the student trains on ``device``
    (default: CUDA, else MPS, else CPU) and is moved back where it was.
    """
    dataset: Dataset = (Answered(x, soft) if is_stream(x)  # type: ignore[arg-type]
                        else TensorDataset(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(soft)))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=seeded_generator(seed),
                        num_workers=num_workers)
    with placed(student, device) as dev:
        optimiser = torch.optim.Adam(student.parameters(), lr=lr)
        student.train()
        for _ in range(epochs):
            for xb, pb in loader:
                xb, pb = xb.to(dev), pb.to(dev)
                optimiser.zero_grad(set_to_none=True)
                log_q = F.log_softmax(student(xb) / temperature, dim=1)
                loss = F.kl_div(log_q, pb, reduction="batchmean") * temperature**2
                loss.backward()
                optimiser.step()
        student.eval()


@dataclass(frozen=True)
class Distill(Attack):
    """Ask the target's probabilities on ``n_queries`` thief images; train a fresh ``arch`` to match them.

    A Dataset pool is streamed (asked in chunks, read again batch by batch to train, on
    ``ThiefData.device``); only the answers are kept in memory.
    """

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
        x = thief.pool_set(self.pool, self.n_queries)
        check_pool_shape(x, target, "query")
        answers = query(target, x, need_probabilities=True, num_workers=thief.num_workers)
        student = fresh_model(self.arch, x, target, answers, self.num_classes, thief.seed)
        assert answers.probabilities is not None
        train_on_soft_labels(student, x, soften(answers.probabilities, self.temperature), temperature=self.temperature,
                             epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=thief.seed,
                             device=thief.device, num_workers=thief.num_workers)
        return stolen_module(student, f"{self.name} student", queries=len(x))
