"""Export a torch model to the portable formats suspects are checked in: ONNX and torch.export."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torch import nn

from tracemark._util.files import atomic_write_bytes


def onnx_bytes(model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """The model as ONNX bytes with a dynamic batch dimension (opset 17, TorchScript exporter)."""
    model.eval()
    buffer = io.BytesIO()
    example = torch.zeros((1, *input_shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            buffer,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return buffer.getvalue()


def save_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...]) -> Path:
    """Write the model as an ONNX file (atomically)."""
    return atomic_write_bytes(path, onnx_bytes(model, input_shape), mode=0o644)


def save_exported(model: nn.Module, path: str | Path, input_shape: tuple[int, ...]) -> Path:
    """Write the model as a ``torch.export`` program (``.pt2``) with a dynamic batch dimension."""
    model.eval()
    example = torch.zeros((2, *input_shape))
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return atomic_write_bytes(path, buffer.getvalue(), mode=0o644)
