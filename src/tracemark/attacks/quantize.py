"""Post-training int8 quantization with torch.ao (static, FX graph mode, calibrated on the thief's data)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from tracemark.attacks.base import Attack, Stolen, ThiefData, require_module, stolen_module
from tracemark.targets.base import Target


def quantize_int8(model: nn.Module, calibration: torch.Tensor, backend: str = "fbgemm") -> nn.Module:
    """A copy of ``model`` with Conv and Linear layers quantized to int8 (weights qint8, activations quint8)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        model = model.eval()
        prepared = prepare_fx(model, get_default_qconfig_mapping(backend), (calibration[:2],))
        with torch.no_grad():
            for start in range(0, len(calibration), 256):
                prepared(calibration[start : start + 256])
        return convert_fx(prepared)


def int8_layers(model: nn.Module) -> dict[str, torch.dtype]:
    """Name → weight dtype of every quantized layer in ``model``."""
    found = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if callable(weight) and not isinstance(weight, torch.Tensor):
            try:
                found[name] = weight().dtype
            except (TypeError, RuntimeError):
                continue
    return found


@dataclass(frozen=True)
class Quantize(Attack):
    """Static int8 post-training quantization, calibrated on ``n_calibration`` thief images.

    Only those images are read from a Dataset thief; quantized int8 kernels run on the CPU, so
    ``ThiefData.device`` does not apply.
    """

    n_calibration: int = 512

    kind = "quantize"
    access = "weights"

    @property
    def label(self) -> str:
        return "int8"

    @property
    def strength(self) -> float:
        return 8.0

    def params(self) -> dict[str, Any]:
        return {"bits": 8}

    def run(self, victim: nn.Module | Target, thief: ThiefData) -> Stolen:
        model = require_module(victim, self).cpu()  # int8 kernels run on the CPU
        calibration = torch.from_numpy(np.ascontiguousarray(thief.pool("in", self.n_calibration), dtype=np.float32))
        quantized = quantize_int8(model, calibration)
        return stolen_module(quantized, f"{self.name} of the victim", int8_layers=sorted(int8_layers(quantized)))
