"""Targets that run locally: a torch module, an ONNX file, a torch.export program, a callable."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from tracemark.errors import ModelFileError, ShapeMismatchError, TargetError
from tracemark.targets.base import Answers, Target


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _scores_to_answers(scores: np.ndarray) -> Answers:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ShapeMismatchError(f"model output has shape {scores.shape}; expected (batch, classes)")
    return Answers(scores.argmax(axis=1), _softmax(scores))


class TorchTarget(Target):
    """A torch ``nn.Module`` (or an exported program's module) returning logits.

    Inputs are sent to ``device`` (checked to be present), by default to wherever the module's weights are, so a
    model kept on a GPU is asked there; answers come back to the CPU.
    """

    def __init__(self, module: nn.Module | Callable[[torch.Tensor], torch.Tensor], description: str = "torch module",
                 input_shape: tuple[int, ...] | None = None, num_classes: int | None = None, batch_size: int = 512,
                 device: str | torch.device | None = None):
        from tracemark.data.devices import resolve_device

        self.module = module
        self.description = description
        spec = getattr(module, "tracemark_spec", None)
        self.input_shape = input_shape or (tuple(spec.input_shape) if spec else None)
        self.num_classes = num_classes or (spec.num_classes if spec else None)
        self.batch_size = batch_size
        self.device = resolve_device(device) if device is not None else None
        if self.device is not None and isinstance(module, nn.Module):
            module.to(self.device)

    def _input_device(self) -> torch.device:
        from tracemark.data.devices import model_device

        if self.device is not None:
            return self.device
        return model_device(self.module) if isinstance(self.module, nn.Module) else torch.device("cpu")

    @torch.no_grad()
    def _answer(self, x: np.ndarray) -> Answers:
        if isinstance(self.module, nn.Module):
            try:
                self.module.eval()
            except NotImplementedError:  # exported programs' modules are always in eval mode
                pass
        outputs, device = [], self._input_device()
        for start in range(0, len(x), self.batch_size):
            batch = torch.from_numpy(x[start : start + self.batch_size]).to(device)
            try:
                outputs.append(self.module(batch).detach().float().cpu().numpy())
            except (RuntimeError, ValueError) as exc:
                if isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc):
                    raise TargetError(
                        f"{self.description} ran out of memory answering {len(batch)} inputs ({str(exc).splitlines()[0][-120:]}); "
                        "an oversized or hostile model: give it fewer inputs at a time (batch size) or more memory"
                    ) from exc
                raise ShapeMismatchError(
                    f"{self.description} cannot take inputs of shape {tuple(x.shape[1:])}: {str(exc).splitlines()[0]}"
                ) from exc
        return _scores_to_answers(np.concatenate(outputs))


class OnnxTarget(Target):
    """An ONNX model run by onnxruntime (from a path or bytes). Output 0 is taken as the class scores."""

    def __init__(self, model: str | Path | bytes, description: str | None = None):
        import onnxruntime as ort

        source = model if isinstance(model, bytes) else str(model)
        self.description = description or ("onnx model (bytes)" if isinstance(model, bytes) else str(model))
        try:
            self.session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelFileError(f"{self.description}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from exc
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        dims = inp.shape[1:]
        self.input_shape = tuple(dims) if all(isinstance(d, int) for d in dims) else None
        out_dims = self.session.get_outputs()[0].shape
        self.num_classes = out_dims[-1] if out_dims and isinstance(out_dims[-1], int) else None
        self._fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

    def _answer(self, x: np.ndarray) -> Answers:
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise ShapeMismatchError(f"{self.description} expects inputs of shape {self.input_shape}, got {tuple(x.shape[1:])}")
        step = self._fixed_batch or 512
        outputs = []
        for start in range(0, len(x), step):
            batch = x[start : start + step]
            if self._fixed_batch and len(batch) < self._fixed_batch:
                pad = np.zeros((self._fixed_batch - len(batch), *batch.shape[1:]), dtype=batch.dtype)
                out = self.session.run(None, {self.input_name: np.concatenate([batch, pad])})[0][: len(batch)]
            else:
                out = self.session.run(None, {self.input_name: batch})[0]
            outputs.append(out)
        return _scores_to_answers(np.concatenate(outputs))


class CallableTarget(Target):
    """Any Python function from a float32 batch to labels (1-D) or class scores (2-D)."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], description: str = "python callable",
                 input_shape: tuple[int, ...] | None = None, num_classes: int | None = None):
        self.fn = fn
        self.description = description
        self.input_shape = input_shape
        self.num_classes = num_classes

    def _answer(self, x: np.ndarray) -> Answers:
        out = np.asarray(self.fn(x))
        if out.ndim == 1:
            return Answers(out.astype(np.int64))
        return Answers(out.argmax(axis=1), out if np.allclose(out.sum(axis=1), 1.0, atol=1e-3) and out.min() >= 0 else _softmax(out))


class FixedBatchModule(nn.Module):
    """Runs a module exported for exactly ``batch_size`` inputs on any batch: chunks, and pads the last chunk."""

    def __init__(self, module: Callable[[torch.Tensor], torch.Tensor], batch_size: int):
        super().__init__()
        self.inner = module
        self.batch_size = batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for start in range(0, len(x), self.batch_size):
            batch = x[start : start + self.batch_size]
            short = self.batch_size - len(batch)
            if short:
                batch = torch.cat([batch, batch.new_zeros((short, *batch.shape[1:]))])
            outputs.append(self.inner(batch)[: self.batch_size - short])
        return torch.cat(outputs)


def exported_module(program: torch.export.ExportedProgram) -> tuple[nn.Module, tuple[int, ...] | None]:
    """The module of an exported program that takes any batch size, and its per-example input shape if fixed."""
    module = program.module()
    inputs = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
    value = inputs[0].meta.get("val") if len(inputs) == 1 else None
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) < 1:
        return module, None
    rest = tuple(shape[1:])
    example_shape = rest if all(isinstance(d, int) for d in rest) else None
    if isinstance(shape[0], int):
        return FixedBatchModule(module, shape[0]), example_shape
    return module, example_shape


def exported_target(path: str | Path) -> TorchTarget:
    """A ``torch.export`` program saved with ``torch.export.save`` (``.pt2``), checked first and never unpickled.

    Archives that hold pickles, native code, or graph calls outside ATen are refused with
    :class:`~tracemark.errors.UnsafeFileError` (see :mod:`tracemark.trust.modelfiles`). A program
    exported for a fixed batch size is run in chunks of that size.
    """
    from tracemark.trust.modelfiles import load_exported_program

    module, input_shape = exported_module(load_exported_program(path))
    return TorchTarget(module, description=str(path), input_shape=input_shape)
