"""The model behind the server: a package (decrypted in memory) or a plain model file, as class scores."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from tracemark.errors import ModelFileError
from tracemark.package.licence import Licence

Scorer = Callable[[np.ndarray], np.ndarray]


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax (float64)."""
    z = np.asarray(scores, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def torch_scorer(module: torch.nn.Module) -> Scorer:
    """Logits of a torch module, without gradients."""
    try:
        module.eval()
    except NotImplementedError:  # exported programs' modules are always in eval mode
        pass

    def scores(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).float().numpy()

    return scores


def onnx_scorer(session: Any) -> Scorer:
    """Output 0 of an onnxruntime session (inputs padded when the model has a fixed batch size)."""
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None

    def scores(x: np.ndarray) -> np.ndarray:
        if fixed is None:
            return session.run(None, {inp.name: x})[0]
        outs = []
        for start in range(0, len(x), fixed):
            batch = x[start : start + fixed]
            pad = np.zeros((fixed - len(batch), *batch.shape[1:]), dtype=batch.dtype)
            outs.append(session.run(None, {inp.name: np.concatenate([batch, pad])})[0][: len(batch)])
        return np.concatenate(outs)

    return scores


@dataclass
class ServedModel:
    """A classifier ready to serve: its scorer, input shape, class count, and (for packages) licence."""

    model_id: str
    kind: str
    input_shape: tuple[int, ...]
    num_classes: int
    scorer: Scorer
    licence: Licence | None = None

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) for a float32 batch (N, *input_shape)."""
        return softmax(self.scorer(x))

    def licence_expired(self, now: datetime | None = None) -> bool:
        """Whether the package licence (if any) has run out."""
        return self.licence is not None and (now or datetime.now(timezone.utc)) > self.licence.not_after

    def describe(self) -> dict[str, Any]:
        """Public description: no weights, no keys, no customer."""
        return {"model_id": self.model_id, "kind": self.kind, "input_shape": list(self.input_shape),
                "num_classes": self.num_classes, "licensed_until": self.licence.to_dict()["not_after"] if self.licence else None}

    @classmethod
    def build(cls, model_id: str, kind: str, scorer: Scorer, input_shape: Sequence[int] | None,
              licence: Licence | None = None) -> "ServedModel":
        """Check the scorer on a zero input (which also warms it up) and learn the class count."""
        if not input_shape or any(int(d) < 1 for d in input_shape):
            raise ModelFileError(f"{model_id}: input shape unknown; give it (e.g. --input-shape 1,28,28)")
        shape = tuple(int(d) for d in input_shape)
        try:
            out = np.asarray(scorer(np.zeros((1, *shape), dtype=np.float32)))
        except Exception as exc:  # torch and onnxruntime raise untyped errors for a wrong shape
            raise ModelFileError(f"{model_id}: cannot run on inputs of shape {list(shape)} ({str(exc).splitlines()[0]})") from exc
        if out.ndim != 2 or out.shape[0] != 1 or out.shape[1] < 2 or not math.isfinite(float(out.sum())):
            raise ModelFileError(f"{model_id}: output has shape {list(out.shape)}; expected (batch, classes >= 2)")
        return cls(model_id, kind, shape, int(out.shape[1]), scorer, licence)


def _module_shape(module: torch.nn.Module) -> tuple[int, ...] | None:
    spec = getattr(module, "tracemark_spec", None)
    return tuple(spec.input_shape) if spec is not None else None


def from_module(module: torch.nn.Module, model_id: str = "model", input_shape: Sequence[int] | None = None) -> ServedModel:
    """Serve an in-memory torch module (its tracemark spec gives the input shape unless ``input_shape`` does)."""
    return ServedModel.build(model_id, "torch", torch_scorer(module), input_shape or _module_shape(module))


def is_package(path: Path) -> bool:
    """Whether ``path`` starts with the package magic."""
    from tracemark.package.format import MAGIC_PREFIX

    with path.open("rb") as handle:
        return handle.read(len(MAGIC_PREFIX)) == MAGIC_PREFIX


def from_package(path: str | Path, unlockers: Any, vendor_key: Any = None, input_shape: Sequence[int] | None = None,
                 *, trust_any_signer: bool = False) -> ServedModel:
    """Open a protected package (in memory only) and serve it under its licence.

    The signer must be pinned (``vendor_key``: key(s) or ``vendor.pub`` path(s), else the environment; see
    :mod:`tracemark.trust.signers`) unless ``trust_any_signer``.
    """
    from tracemark.package import load_package

    loaded = load_package(path, unlockers, vendor_key=vendor_key, trust_any_signer=trust_any_signer)
    model_id = loaded.manifest.model.id
    arch = loaded.manifest.model.architecture or {}
    shape = input_shape or arch.get("input_shape")
    if loaded.session is not None:
        dims = loaded.session.get_inputs()[0].shape[1:]
        shape = shape or (dims if all(isinstance(d, int) for d in dims) else None)
        return ServedModel.build(model_id, "onnx", onnx_scorer(loaded.session), shape, loaded.licence)
    if loaded.model is None:
        raise ModelFileError(f"{path}: the package holds bare tensors without an architecture; it cannot be served")
    return ServedModel.build(model_id, "torch", torch_scorer(loaded.model), shape or _module_shape(loaded.model), loaded.licence)


def from_file(path: str | Path, input_shape: Sequence[int] | None = None) -> ServedModel:
    """Serve a plain model file (.safetensors by tracemark, .onnx, .pt2), never unpickling."""
    from tracemark.targets import load_target
    from tracemark.targets.local import OnnxTarget

    target = load_target(path)
    name = Path(path).name
    if isinstance(target, OnnxTarget):
        return ServedModel.build(name, "onnx", onnx_scorer(target.session), input_shape or target.input_shape)
    return ServedModel.build(name, "torch", torch_scorer(target.module), input_shape or target.input_shape)  # type: ignore[arg-type]


__all__ = ["ServedModel", "from_module", "from_package", "from_file", "is_package", "softmax"]
