"""A plain, seeded training loop and accuracy helpers used by the demo, embedding and benchmarks."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tracemark._progress import progress_bar


@dataclass
class FitReport:
    """What a call to :func:`fit` did."""

    epochs: int
    steps: int
    samples_seen: int
    seconds: float


def to_tensor_dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    """Wrap image and label arrays as a torch ``TensorDataset``."""
    return TensorDataset(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(np.asarray(y, dtype=np.int64)))


def fit(
    model: nn.Module,
    dataset: Dataset,
    *,
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 0.0,
    show_progress: bool = False,
    description: str = "training",
) -> FitReport:
    """Train ``model`` on ``dataset`` with Adam and cross-entropy; shuffling is seeded."""
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    steps = samples = 0
    start = time.perf_counter()
    with progress_bar(epochs * len(loader), description, enabled=show_progress) as advance:
        for _ in range(epochs):
            for xb, yb in loader:
                optimiser.zero_grad(set_to_none=True)
                loss = loss_fn(model(xb), yb)
                loss.backward()
                optimiser.step()
                steps += 1
                samples += len(xb)
                advance()
    model.eval()
    return FitReport(epochs, steps, samples, time.perf_counter() - start)


@torch.no_grad()
def predict_labels(model: nn.Module, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Arg-max labels of ``model`` on ``x`` (evaluation mode)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32))
        out.append(model(xb).argmax(dim=1).numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of ``x`` that ``model`` labels as ``y``."""
    if len(x) == 0:
        return float("nan")
    return float(np.mean(predict_labels(model, x) == np.asarray(y)))
