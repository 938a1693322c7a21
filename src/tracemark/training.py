"""A plain, seeded training loop and accuracy helpers used by the demo, embedding and benchmarks."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tracemark._progress import progress_bar
from tracemark.data.batches import as_loader, batches, check_items, is_stream
from tracemark.data.devices import model_device, placed
from tracemark.errors import InvalidOptionError

Precision = Optional[Literal["bf16", "fp16"]]
PRECISIONS = (None, "bf16", "fp16")


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


def mixed_precision(device: torch.device, precision: Precision
                    ) -> tuple[Callable[[], AbstractContextManager], torch.amp.GradScaler | None]:
    """The forward-pass context for ``precision`` on ``device`` and the gradient scaler it needs (fp16 only).

    ``None``: full float32 (no autocast, no scaler). ``"bf16"``: ``torch.autocast`` to bfloat16, on CPU or CUDA.
    ``"fp16"``: autocast to float16 with a ``GradScaler``, on CUDA only.
    """
    if precision not in PRECISIONS:
        raise InvalidOptionError(f"precision {precision!r} is not one of None, 'bf16', 'fp16'")
    if precision is None:
        return nullcontext, None
    if precision == "fp16" and device.type != "cuda":
        raise InvalidOptionError(f"precision 'fp16' needs a CUDA device (training on {device}); use 'bf16' or None there")
    if device.type not in ("cpu", "cuda"):
        raise InvalidOptionError(f"mixed precision runs on CPU or CUDA, not {device.type}; use precision=None there")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    return (lambda: torch.autocast(device_type=device.type, dtype=dtype)), scaler


def backward_step(loss: torch.Tensor, optimiser: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """``loss.backward()`` and an optimiser step, through ``scaler`` when one is given (fp16)."""
    if scaler is None:
        loss.backward()
        optimiser.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimiser)
    scaler.update()


def _steps_per_epoch(loader: DataLoader) -> int:
    try:
        return len(loader)
    except TypeError:  # an iterable dataset of unknown length
        return 0


def fit(
    model: nn.Module,
    dataset: Dataset | DataLoader,
    *,
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 0.0,
    show_progress: bool = False,
    description: str = "training",
    device: str | torch.device | None = None,
    num_workers: int = 0,
    precision: Precision = None,
) -> FitReport:
    """Train ``model`` on ``dataset`` with Adam and cross-entropy; shuffling is seeded.

    ``dataset`` yields ``(x, y)``; a ``DataLoader`` is used as given (its own batch size,
    sampler and workers; ``seed`` then does not shuffle). The model is moved to ``device``
    (default: CUDA, else MPS, else CPU) to train, then moved back where it was.
    ``precision``: ``None`` (float32), ``"bf16"`` (CPU or CUDA) or ``"fp16"`` (CUDA, with a
    gradient scaler) for the forward passes; the weights stay float32 (see :func:`mixed_precision`).
    """
    check_items(dataset)
    with placed(model, device) as dev:
        autocast, scaler = mixed_precision(dev, precision)
        generator = torch.Generator().manual_seed(seed)
        loader = as_loader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=True, generator=generator)
        optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        steps = samples = 0
        start = time.perf_counter()
        with progress_bar(epochs * _steps_per_epoch(loader), description, enabled=show_progress) as advance:
            for _ in range(epochs):
                for xb, yb in loader:
                    xb, yb = xb.to(dev), yb.to(dev)
                    optimiser.zero_grad(set_to_none=True)
                    with autocast():
                        loss = loss_fn(model(xb), yb)
                    backward_step(loss, optimiser, scaler)
                    steps += 1
                    samples += len(xb)
                    advance()
        model.eval()
        return FitReport(epochs, steps, samples, time.perf_counter() - start)


@torch.no_grad()
def _labels(model: nn.Module, x: np.ndarray | Dataset | DataLoader, batch_size: int, num_workers: int,
            device: str | torch.device | None) -> Iterator[tuple[np.ndarray, torch.Tensor | None]]:
    """Predicted labels batch by batch (with the batch's true labels for a Dataset), in evaluation mode."""
    was_training = model.training
    with placed(model, model_device(model) if device is None else device) as dev:
        model.eval()
        try:
            if is_stream(x):
                for xb, yb in batches(x, batch_size=batch_size, num_workers=num_workers):
                    yield model(xb.to(dev)).argmax(dim=1).cpu().numpy(), yb
            else:
                for start in range(0, len(x), batch_size):
                    xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32))
                    yield model(xb.to(dev)).argmax(dim=1).cpu().numpy(), None
        finally:
            model.train(was_training)


def predict_labels(model: nn.Module, x: np.ndarray | Dataset | DataLoader, batch_size: int = 1024, *,
                   device: str | torch.device | None = None, num_workers: int = 0) -> np.ndarray:
    """Arg-max labels of ``model`` on ``x`` (evaluation mode).

    ``x`` is an image array, or a ``Dataset``/``DataLoader`` of ``(x, y)`` streamed in batches.
    ``device`` (default: where the model already is) is where it runs; it is moved back after.
    """
    out = [labels for labels, _ in _labels(model, x, batch_size, num_workers, device)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def accuracy(model: nn.Module, x: np.ndarray | Dataset | DataLoader, y: np.ndarray | None = None, *,
             batch_size: int = 1024, device: str | torch.device | None = None, num_workers: int = 0) -> float:
    """Fraction of ``x`` that ``model`` labels as ``y``.

    ``x`` is an image array with labels ``y``, or a ``Dataset``/``DataLoader`` of ``(x, y)``
    (then ``y`` is not given), streamed in batches. ``device`` as in :func:`predict_labels`.
    """
    if is_stream(x):
        if y is not None:
            raise TypeError("accuracy: a Dataset or DataLoader carries its own labels; do not pass y")
        correct = total = 0
        for labels, yb in _labels(model, x, batch_size, num_workers, device):
            correct += int(np.sum(labels == np.asarray(yb)))
            total += len(labels)
        return correct / total if total else float("nan")
    if y is None:
        raise TypeError("accuracy: pass the labels y with an image array")
    if len(x) == 0:
        return float("nan")
    return float(np.mean(predict_labels(model, x, batch_size, device=device) == np.asarray(y)))
