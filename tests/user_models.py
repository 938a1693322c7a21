"""A user's own model code, as `tracemark ... --arch tests.user_models:small_residual` imports it."""

from __future__ import annotations

import torch
from torch import nn

tracemark_spec = {"input_shape": (1, 8, 8), "num_classes": 10}


class _Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv(x))


def small_residual(input_shape: tuple[int, int, int] = (1, 8, 8), num_classes: int = 10) -> nn.Module:
    """A small residual CNN for 8x8 digits: stem conv, one residual block, pool, linear head."""
    c, h, w = input_shape
    return nn.Sequential(nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), _Residual(32), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(32 * (h // 2) * (w // 2), 128), nn.ReLU(), nn.Linear(128, num_classes))


def wide_residual() -> nn.Module:
    """Another model (no arguments): weights of small_residual do not fit it."""
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 64, 10))


def not_a_module() -> dict:
    """A factory that returns something other than an nn.Module."""
    return {"conv": 1}
