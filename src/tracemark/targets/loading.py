"""Open a suspect model file as a Target, without ever unpickling it."""

from __future__ import annotations

from pathlib import Path

from tracemark.data.models import ModelSpec, build_model, load_model
from tracemark.errors import ModelFileError
from tracemark.targets.local import OnnxTarget, TorchTarget, exported_target
from tracemark.trust.modelfiles import PICKLE_SUFFIXES, load_state_dict_file


def _load_weights_only(path: Path, spec: ModelSpec | None) -> TorchTarget:
    state = load_state_dict_file(path)
    if spec is None:
        raise ModelFileError(f"{path}: a bare state dict needs its architecture (arch, input shape, classes)")
    model = build_model(spec.arch, spec.input_shape, spec.num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: weights do not fit architecture {spec.arch!r}") from exc
    return TorchTarget(model, description=str(path))


def load_target(path: str | Path, spec: ModelSpec | None = None) -> TorchTarget | OnnxTarget:
    """A Target for a local model file, chosen by suffix.

    ``.safetensors`` (tracemark metadata, or ``spec``), ``.onnx``, ``.pt2`` (torch.export),
    and ``.pt``/``.pth`` state dicts read with ``weights_only=True`` (pickled modules are
    refused with :class:`~tracemark.errors.UnsafeFileError`).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no model file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return TorchTarget(load_model(path, spec), description=str(path))
    if suffix == ".onnx":
        return OnnxTarget(path)
    if suffix == ".pt2":
        return exported_target(path)
    if suffix in PICKLE_SUFFIXES:
        return _load_weights_only(path, spec)
    raise ModelFileError(f"{path}: unknown model format {suffix!r}; use .safetensors, .onnx, .pt2 or a .pt state dict")
