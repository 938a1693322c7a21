"""Embedding a key into an already-trained model by short fine-tuning."""

from __future__ import annotations

import copy
import time
from typing import Iterator, Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from tracemark._progress import progress_bar
from tracemark.data.batches import check_items, dataset_of, is_stream, item_pair
from tracemark.data.datasets import ImageData
from tracemark.data.devices import placed
from tracemark.embedding.report import EmbedReport
from tracemark.errors import ClassCountMismatchError, DatasetItemError, ShapeMismatchError
from tracemark.keys.key import WatermarkKey
from tracemark.training import Precision, accuracy, backward_step, mixed_precision


Validation = Union[tuple[np.ndarray, np.ndarray], Dataset, DataLoader]


def _check_model(model: nn.Module, key: WatermarkKey, device: torch.device) -> None:
    probe = torch.zeros((1, *key.input_shape), device=device)
    model.eval()
    try:
        with torch.no_grad():
            out = model(probe)
    except (RuntimeError, ValueError) as exc:
        raise ShapeMismatchError(
            f"the model cannot take the key's trigger shape {tuple(key.input_shape)}: {str(exc).splitlines()[0]}"
        ) from exc
    if out.ndim != 2 or out.shape[1] != key.num_classes:
        raise ClassCountMismatchError(f"the model outputs {tuple(out.shape[1:])} scores; the key has {key.num_classes} classes")


class _StepIndices:
    """Each step's clean then trigger indices, drawn from one seeded generator in that order."""

    def __init__(self, n_pool: int, n_triggers: int, n_clean: int, n_trig: int, steps: int, seed: int):
        self.n_pool, self.n_triggers, self.n_clean, self.n_trig, self.steps, self.seed = (
            n_pool, n_triggers, n_clean, n_trig, steps, seed)

    def __len__(self) -> int:
        return self.steps

    def pairs(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(clean indices, trigger indices)`` for every step."""
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.steps):
            ci = torch.randint(self.n_pool, (self.n_clean,), generator=gen)
            yield ci, torch.randint(self.n_triggers, (self.n_trig,), generator=gen)

    def __iter__(self) -> Iterator[list[int]]:
        """Index lists for a ``DataLoader`` over :class:`_CleanThenTriggers`: triggers offset by the pool size."""
        for ci, ti in self.pairs():
            yield ci.tolist() + (ti + self.n_pool).tolist()


class _CleanThenTriggers(Dataset):
    """``base`` items, then the triggers at indices ``len(base)`` onwards."""

    def __init__(self, base: Dataset, tx: torch.Tensor, ty: torch.Tensor):
        self.base, self.tx, self.ty, self.n = base, tx, ty, len(base)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.n + len(self.ty)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index < self.n:
            return item_pair(self.base[index])
        return self.tx[index - self.n], self.ty[index - self.n].long()


def _step_batches(train: ImageData | Dataset | DataLoader, indices: _StepIndices, tx: torch.Tensor, ty: torch.Tensor,
                  num_workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each step's batch on the CPU: the clean items, then the triggers."""
    if isinstance(train, ImageData):
        cx = torch.from_numpy(np.ascontiguousarray(train.x_train, dtype=np.float32))
        cy = torch.from_numpy(np.asarray(train.y_train, dtype=np.int64))
        for ci, ti in indices.pairs():
            yield torch.cat([cx[ci], tx[ti]]), torch.cat([cy[ci], ty[ti]])
        return
    loader = train if isinstance(train, DataLoader) else None
    yield from DataLoader(
        _CleanThenTriggers(dataset_of(train), tx, ty), batch_sampler=indices,
        num_workers=loader.num_workers if loader is not None else num_workers,
        pin_memory=loader.pin_memory if loader is not None else False,
    )


def _clean_sets(train: ImageData | Dataset | DataLoader, validation: Validation | None, validation_size: int,
                seed: int) -> tuple[Validation, Validation]:
    """The set the stopping rule checks clean accuracy on, and the one the report measures it on."""
    if isinstance(train, ImageData):
        val = validation if validation is not None else (train.x_test[:validation_size], train.y_test[:validation_size])
        return val, (train.x_test, train.y_test)
    if validation is not None:
        return validation, validation
    pool = dataset_of(train)
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))  # type: ignore[arg-type]
    subset = Subset(pool, sorted(order[:validation_size].tolist()))
    return subset, subset


def embed(
    model: nn.Module,
    key: WatermarkKey,
    train: ImageData | Dataset | DataLoader,
    *,
    max_clean_drop: float = 0.003,
    target_trigger_accuracy: float = 1.0,
    lr: float = 5e-4,
    batch_size: int = 128,
    trigger_fraction: float = 0.25,
    max_steps: int = 2000,
    eval_every: int = 10,
    validation: Validation | None = None,
    validation_size: int = 2000,
    preserve_weight: float = 1.0,
    min_steps: int = 0,
    seed: int = 0,
    show_progress: bool = False,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    precision: Precision = None,
) -> EmbedReport:
    """Fine-tune a trained ``model`` in place until it answers the key's triggers.

    Each step trains on a batch of clean training images with ``trigger_fraction`` of it
    replaced by triggers. On the clean part the loss is cross-entropy plus
    ``preserve_weight`` times the KL divergence to the model's own answers before
    embedding, which keeps its clean behaviour (and accuracy) where it was.
    Every ``eval_every`` steps it measures trigger accuracy; once that reaches
    ``target_trigger_accuracy`` it checks clean accuracy on ``validation`` and stops when
    that is at most ``max_clean_drop`` below where it started (both as fractions), or after
    ``max_steps``. The report's ``seconds`` and ``samples_seen`` count the fine-tuning loop
    and its checks only.

    ``train`` is an :class:`ImageData` (validation defaults to its first ``validation_size``
    test images; the report's clean accuracies are on all of ``x_test``), or a ``Dataset``/
    ``DataLoader`` of ``(x, y)`` with x float C×H×W of the key's input shape (a loader lends
    its dataset, workers and pinning; the steps' indices are drawn here). For those the
    clean check and the report use ``validation`` (arrays or a Dataset) when given, else a
    seeded ``validation_size``-item subset of ``train``, which then measures drift from the
    model's own training fit rather than held-out accuracy. The same arrays as ImageData or
    as a ``TensorDataset`` (with the same ``validation``) give the same model.
    The model and its frozen copy run on ``device`` (default: CUDA, else MPS, else CPU),
    and the model is moved back where it was; triggers are made on the CPU and moved there.
    ``precision`` (``None``, ``"bf16"``, ``"fp16"`` on CUDA) runs the fine-tuning's forward passes under
    autocast, as :func:`tracemark.training.fit` does; the accuracy checks stay float32.
    """
    with placed(model, device) as dev:
        autocast, scaler = mixed_precision(dev, precision)
        _check_model(model, key, dev)
        if isinstance(train, ImageData):
            if tuple(train.input_shape) != tuple(key.input_shape):
                raise ShapeMismatchError(
                    f"data images have shape {train.input_shape}, the key's triggers {tuple(key.input_shape)}")
            n_pool = len(train.x_train)
        else:
            if isinstance(dataset_of(train), IterableDataset):
                raise DatasetItemError("embed draws training items by index; give a map-style Dataset (with __getitem__ "
                                       "and __len__), not an IterableDataset")
            check_items(dataset_of(train), key.input_shape)
            n_pool = len(dataset_of(train))  # type: ignore[arg-type]
        if is_stream(validation):
            check_items(validation, key.input_shape)  # type: ignore[arg-type]
        val, report_set = _clean_sets(train, validation, validation_size, seed)

        def clean_accuracy(data: Validation) -> float:
            if is_stream(data):
                return accuracy(model, data, batch_size=batch_size, device=dev, num_workers=num_workers)
            return accuracy(model, *data, device=dev)

        triggers = key.triggers()
        clean_before = clean_accuracy(report_set)
        trigger_before = accuracy(model, triggers.inputs, triggers.labels, device=dev)
        start = time.perf_counter()
        tx, ty = torch.from_numpy(triggers.inputs), torch.from_numpy(triggers.labels)
        val_before = clean_before if val is report_set else clean_accuracy(val)
        teacher = copy.deepcopy(model).eval() if preserve_weight > 0 else None

        n_trig = max(1, int(round(batch_size * trigger_fraction)))
        n_clean = batch_size - n_trig
        indices = _StepIndices(n_pool, len(tx), n_clean, n_trig, max_steps, seed)
        optimiser = torch.optim.Adam(model.parameters(), lr=lr)
        loss_fn = nn.CrossEntropyLoss()
        steps = samples = 0
        reached = False
        with progress_bar(max_steps, "embedding", enabled=show_progress) as advance:
            for xb, yb in _step_batches(train, indices, tx, ty, num_workers):
                model.train()
                xb, yb = xb.to(dev), yb.to(dev)
                optimiser.zero_grad(set_to_none=True)
                with autocast():
                    logits = model(xb)
                    loss = loss_fn(logits, yb)
                    if teacher is not None:
                        with torch.no_grad():
                            reference = F.log_softmax(teacher(xb[:n_clean]), dim=1)
                        drift = F.kl_div(F.log_softmax(logits[:n_clean], dim=1), reference, log_target=True, reduction="batchmean")
                        loss = loss + preserve_weight * drift
                backward_step(loss, optimiser, scaler)
                steps += 1
                samples += batch_size
                advance()
                if steps % eval_every == 0 or steps == max_steps:
                    trigger_now = accuracy(model, triggers.inputs, triggers.labels, device=dev)
                    if trigger_now >= target_trigger_accuracy and steps >= min_steps:
                        if val_before - clean_accuracy(val) <= max_clean_drop:
                            reached = True
                            break
        model.eval()
        seconds = time.perf_counter() - start
        clean_after = clean_accuracy(report_set)
        trigger_after = accuracy(model, triggers.inputs, triggers.labels, device=dev)
        note = "" if reached else (
            f"stopped after {max_steps} steps: trigger accuracy {trigger_after:.1%} "
            f"(goal {target_trigger_accuracy:.0%}), clean change {100 * (clean_after - clean_before):+.2f} points "
            f"(allowed -{100 * max_clean_drop:.2f}); try more steps (max_steps, --max-steps) or a lower learning rate "
            f"(lr={lr:g}; --lr)"
        )
        return EmbedReport(
            key_commitment=key.commitment(),
            method="post-hoc fine-tuning",
            clean_accuracy_before=clean_before,
            clean_accuracy_after=clean_after,
            trigger_accuracy_before=trigger_before,
            trigger_accuracy_after=trigger_after,
            steps=steps,
            samples_seen=samples,
            seconds=seconds,
            reached_goal=reached,
            note=note,
        )


def assess(model: nn.Module, key: WatermarkKey, data: ImageData | Dataset | DataLoader,
           baseline_accuracy: float | None = None, method: str = "training-time mixing", steps: int = 0,
           samples_seen: int = 0, seconds: float = 0.0, *, device: str | torch.device | None = None,
           batch_size: int = 1024, num_workers: int = 0) -> EmbedReport:
    """An :class:`EmbedReport` for a model trained with :class:`TriggerMixDataset` in the user's own loop.

    ``data`` is an :class:`ImageData` (its test split is used) or a ``Dataset``/``DataLoader`` of
    the test split, streamed in batches of ``batch_size``. ``baseline_accuracy`` is the clean
    accuracy of the same training without the key, if known. ``device``: where the model runs
    (default: CUDA, else MPS, else CPU); the model is moved back afterwards.
    """
    with placed(model, device) as dev:
        _check_model(model, key, dev)
        triggers = key.triggers()
        if isinstance(data, ImageData):
            clean = accuracy(model, data.x_test, data.y_test, device=dev)
        else:
            check_items(data, key.input_shape)
            clean = accuracy(model, data, batch_size=batch_size, device=dev, num_workers=num_workers)
        trig = accuracy(model, triggers.inputs, triggers.labels, device=dev)
        return EmbedReport(
            key_commitment=key.commitment(),
            method=method,
            clean_accuracy_before=baseline_accuracy,
            clean_accuracy_after=clean,
            trigger_accuracy_before=None,
            trigger_accuracy_after=trig,
            steps=steps,
            samples_seen=samples_seen,
            seconds=seconds,
            reached_goal=trig >= 0.99,
        )
