"""Choosing the torch device a model runs on."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from tracemark.errors import DeviceUnavailableError


def available_devices() -> list[str]:
    """Names of the devices present here, best first (``cuda:0`` … , ``mps``, ``cpu``)."""
    names = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if torch.backends.mps.is_available():
        names.append("mps")
    return [*names, "cpu"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device``, checked to be present; ``None`` picks CUDA, else MPS, else CPU."""
    if device is None:
        return torch.device(available_devices()[0].split(":")[0])
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceUnavailableError(
            f"{device!r} is not a torch device name; available here: {', '.join(available_devices())}"
        ) from exc
    present = dev.type == "cpu" or (dev.type == "mps" and torch.backends.mps.is_available()) or (
        dev.type == "cuda" and torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()
    )
    if not present:
        raise DeviceUnavailableError(
            f"device {str(dev)!r} is not available on this machine; available here: {', '.join(available_devices())} "
            "(pass one of those, or device=None for the best one)"
        )
    return dev


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter or buffer (CPU for a module with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextmanager
def placed(model: nn.Module, device: str | torch.device | None) -> Iterator[torch.device]:
    """Move ``model`` to ``device`` (resolved as by :func:`resolve_device`) for the block, then back where it was."""
    dev = resolve_device(device)
    home = model_device(model)
    model.to(dev)
    try:
        yield dev
    finally:
        model.to(home)
