"""The model behind the server: a package (decrypted in memory) or a plain model file, as class scores.

It runs on a device (:func:`serving_device`): ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
A torch model is moved there and its inputs sent there; an ONNX session gets onnxruntime's CUDA execution provider
when the device is CUDA and this onnxruntime has it (:func:`onnx_providers`). Answers always come back as CPU arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from tracemark.errors import DeviceUnavailableError, ModelFileError
from tracemark.package.licence import Licence

Scorer = Callable[[np.ndarray], np.ndarray]


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax (float64)."""
    z = np.asarray(scores, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


AUTO = "auto"
"""The default serving device: CUDA when torch sees one, else CPU (MPS where present)."""
_CPU_ONLY = ["CPUExecutionProvider"]


def serving_device(device: str | torch.device | None = AUTO) -> torch.device:
    """The torch device a served model runs on, checked present (``auto``/``None``: the best one here; see
    :func:`tracemark.data.devices.resolve_device`)."""
    from tracemark.data.devices import resolve_device

    return resolve_device(None if device is None or str(device).lower() == AUTO else device)


def onnx_providers(device: str | torch.device | None = AUTO) -> list[Any]:
    """onnxruntime execution providers for ``device``: CUDA first (then CPU) when the device is CUDA and this onnxruntime
    has the CUDA provider; else CPU only. An explicit ``cuda`` without that provider is refused in one line; ``auto``
    then stays on the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    name = AUTO if device is None else str(device).lower()
    if name == AUTO:
        use, index = torch.cuda.is_available() and "CUDAExecutionProvider" in available, 0
    else:
        try:
            dev = torch.device(name)
        except (RuntimeError, TypeError) as exc:
            raise DeviceUnavailableError(f"{name!r} is not a device name; give auto, cpu, cuda or cuda:N") from exc
        if dev.type not in ("cpu", "cuda"):
            raise DeviceUnavailableError(f"an ONNX model is served on cpu or cuda, not {name!r}")
        if dev.type == "cuda" and "CUDAExecutionProvider" not in available:
            raise DeviceUnavailableError(f"device {name!r} asked for, but this onnxruntime has no CUDAExecutionProvider "
                                         f"(it has {', '.join(available)}); install onnxruntime-gpu or serve with --device cpu")
        use, index = dev.type == "cuda", dev.index or 0
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"] if use else list(_CPU_ONLY)


def torch_scorer(module: torch.nn.Module, device: str | torch.device | None = None) -> Scorer:
    """Logits of a torch module, without gradients, computed on ``device`` (default: where its weights are; the module
    is moved there) and returned as a CPU array."""
    from tracemark.data.devices import model_device

    try:
        module.eval()
    except NotImplementedError:  # exported programs' modules are always in eval mode
        pass
    dev = torch.device(device) if device is not None else model_device(module)
    if dev != model_device(module):
        try:
            module.to(dev)
        except (RuntimeError, NotImplementedError) as exc:
            raise DeviceUnavailableError(f"the model cannot be moved to {dev} ({str(exc).splitlines()[0]}); serve it with --device cpu") from exc

    def scores(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            batch = torch.from_numpy(x)
            return module(batch if dev.type == "cpu" else batch.to(dev)).float().cpu().numpy()

    return scores


def onnx_scorer(session: Any, device: str | torch.device | None = "cpu") -> Scorer:
    """Output 0 of an onnxruntime session (inputs padded when the model has a fixed batch size), run with the
    execution providers of ``device`` (:func:`onnx_providers`; the session is re-created with them when they differ)."""
    providers = onnx_providers(device)
    if providers != _CPU_ONLY or session.get_providers() != _CPU_ONLY:
        try:
            session.set_providers(providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise DeviceUnavailableError(f"onnxruntime cannot run the model with {providers[0]} ({str(exc).splitlines()[0]}); "
                                         "serve it with --device cpu") from exc
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
    device: str = "cpu"

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
              licence: Licence | None = None, device: str = "cpu") -> "ServedModel":
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
        return cls(model_id, kind, shape, int(out.shape[1]), scorer, licence, device)


def _module_shape(module: torch.nn.Module) -> tuple[int, ...] | None:
    spec = getattr(module, "tracemark_spec", None)
    return tuple(spec.input_shape) if spec is not None else None


def _torch_model(model_id: str, module: torch.nn.Module, input_shape: Sequence[int] | None, licence: Licence | None,
                 device: str | torch.device | None) -> ServedModel:
    from tracemark.data.devices import model_device

    dev = serving_device(device) if device is not None else model_device(module)
    return ServedModel.build(model_id, "torch", torch_scorer(module, dev), input_shape or _module_shape(module), licence, str(dev))


def _onnx_model(model_id: str, session: Any, input_shape: Sequence[int] | None, licence: Licence | None,
                device: str | torch.device | None) -> ServedModel:
    scorer = onnx_scorer(session, device)
    where = "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
    return ServedModel.build(model_id, "onnx", scorer, input_shape, licence, where)


def from_module(module: torch.nn.Module, model_id: str = "model", input_shape: Sequence[int] | None = None,
                device: str | torch.device | None = None) -> ServedModel:
    """Serve an in-memory torch module (its tracemark spec gives the input shape unless ``input_shape`` does) on
    ``device`` (default: where its weights are; ``auto``: see :func:`serving_device`)."""
    return _torch_model(model_id, module, input_shape, None, device)


def is_package(path: Path) -> bool:
    """Whether ``path`` starts with the package magic."""
    from tracemark.package.format import MAGIC_PREFIX

    with path.open("rb") as handle:
        return handle.read(len(MAGIC_PREFIX)) == MAGIC_PREFIX


def from_package(path: str | Path, unlockers: Any, vendor_key: Any = None, input_shape: Sequence[int] | None = None,
                 *, trust_any_signer: bool = False, device: str | torch.device | None = AUTO) -> ServedModel:
    """Open a protected package (in memory only) and serve it under its licence, on ``device`` (:func:`serving_device`).

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
        return _onnx_model(model_id, loaded.session, shape, loaded.licence, device)
    if loaded.model is None:
        raise ModelFileError(f"{path}: the package holds bare tensors without an architecture; it cannot be served")
    return _torch_model(model_id, loaded.model, shape, loaded.licence, device)


def from_file(path: str | Path, input_shape: Sequence[int] | None = None, device: str | torch.device | None = AUTO) -> ServedModel:
    """Serve a plain model file (.safetensors by tracemark, .onnx, .pt2), never unpickling, on ``device``
    (:func:`serving_device`)."""
    from tracemark.targets import load_target
    from tracemark.targets.local import OnnxTarget

    target = load_target(path)
    name = Path(path).name
    if isinstance(target, OnnxTarget):
        return _onnx_model(name, target.session, input_shape or target.input_shape, None, device)
    return _torch_model(name, target.module, input_shape or target.input_shape, None, device)  # type: ignore[arg-type]


__all__ = ["AUTO", "ServedModel", "from_module", "from_package", "from_file", "is_package", "onnx_providers", "serving_device", "softmax"]
