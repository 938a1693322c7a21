"""Embedding a key into an already-trained model by short fine-tuning."""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tracemark._progress import progress_bar
from tracemark.data.datasets import ImageData
from tracemark.embedding.report import EmbedReport
from tracemark.errors import ClassCountMismatchError, ShapeMismatchError
from tracemark.keys.key import WatermarkKey
from tracemark.training import accuracy


def _check_model(model: nn.Module, key: WatermarkKey) -> None:
    probe = torch.zeros((1, *key.input_shape))
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


def embed(
    model: nn.Module,
    key: WatermarkKey,
    data: ImageData,
    *,
    max_clean_drop: float = 0.003,
    target_trigger_accuracy: float = 1.0,
    lr: float = 5e-4,
    batch_size: int = 128,
    trigger_fraction: float = 0.25,
    max_steps: int = 2000,
    eval_every: int = 10,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    validation_size: int = 2000,
    preserve_weight: float = 1.0,
    min_steps: int = 0,
    seed: int = 0,
    show_progress: bool = False,
) -> EmbedReport:
    """Fine-tune a trained ``model`` in place until it answers the key's triggers.

    Each step trains on a batch of clean training images with ``trigger_fraction`` of it
    replaced by triggers. On the clean part the loss is cross-entropy plus
    ``preserve_weight`` times the KL divergence to the model's own answers before
    embedding, which keeps its clean behaviour (and accuracy) where it was.
    Every ``eval_every`` steps it measures trigger accuracy; once that reaches
    ``target_trigger_accuracy`` it checks clean accuracy on ``validation`` (default: the
    first ``validation_size`` test images) and stops when that is at most
    ``max_clean_drop`` below where it started (both as fractions), or after ``max_steps``.
    The report's clean accuracies are measured on ``data.x_test``; its ``seconds`` and
    ``samples_seen`` count the fine-tuning loop and its checks only.
    """
    _check_model(model, key)
    if tuple(data.input_shape) != tuple(key.input_shape):
        raise ShapeMismatchError(f"data images have shape {data.input_shape}, the key's triggers {tuple(key.input_shape)}")
    triggers = key.triggers()
    clean_before = accuracy(model, data.x_test, data.y_test)
    trigger_before = accuracy(model, triggers.inputs, triggers.labels)
    start = time.perf_counter()
    val_x, val_y = validation if validation is not None else (data.x_test[:validation_size], data.y_test[:validation_size])
    tx, ty = torch.from_numpy(triggers.inputs), torch.from_numpy(triggers.labels)
    cx = torch.from_numpy(np.ascontiguousarray(data.x_train, dtype=np.float32))
    cy = torch.from_numpy(np.asarray(data.y_train, dtype=np.int64))
    val_before = accuracy(model, val_x, val_y)
    teacher = copy.deepcopy(model).eval() if preserve_weight > 0 else None

    n_trig = max(1, int(round(batch_size * trigger_fraction)))
    n_clean = batch_size - n_trig
    gen = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    steps = samples = 0
    reached = False
    with progress_bar(max_steps, "embedding", enabled=show_progress) as advance:
        while steps < max_steps:
            model.train()
            ci = torch.randint(len(cx), (n_clean,), generator=gen)
            ti = torch.randint(len(tx), (n_trig,), generator=gen)
            xb = torch.cat([cx[ci], tx[ti]])
            yb = torch.cat([cy[ci], ty[ti]])
            optimiser.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = loss_fn(logits, yb)
            if teacher is not None:
                with torch.no_grad():
                    reference = F.log_softmax(teacher(xb[:n_clean]), dim=1)
                drift = F.kl_div(F.log_softmax(logits[:n_clean], dim=1), reference, log_target=True, reduction="batchmean")
                loss = loss + preserve_weight * drift
            loss.backward()
            optimiser.step()
            steps += 1
            samples += batch_size
            advance()
            if steps % eval_every == 0 or steps == max_steps:
                trigger_now = accuracy(model, triggers.inputs, triggers.labels)
                if trigger_now >= target_trigger_accuracy and steps >= min_steps:
                    if val_before - accuracy(model, val_x, val_y) <= max_clean_drop:
                        reached = True
                        break
    model.eval()
    seconds = time.perf_counter() - start
    clean_after = accuracy(model, data.x_test, data.y_test)
    trigger_after = accuracy(model, triggers.inputs, triggers.labels)
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


def assess(model: nn.Module, key: WatermarkKey, data: ImageData, baseline_accuracy: float | None = None,
           method: str = "training-time mixing", steps: int = 0, samples_seen: int = 0, seconds: float = 0.0) -> EmbedReport:
    """An :class:`EmbedReport` for a model trained with :class:`TriggerMixDataset` in the user's own loop.

    ``baseline_accuracy`` is the clean accuracy of the same training without the key, if known.
    """
    _check_model(model, key)
    triggers = key.triggers()
    clean = accuracy(model, data.x_test, data.y_test)
    trig = accuracy(model, triggers.inputs, triggers.labels)
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
