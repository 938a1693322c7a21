"""Small reference classifiers and a safe model file format (safetensors + architecture metadata).

A model saved by :func:`save_model` is a ``.safetensors`` file whose metadata names the
architecture, input shape and class count, so :func:`load_model` rebuilds it without
unpickling anything.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from tracemark._util.files import atomic_write_bytes
from tracemark.errors import ModelFileError

MODEL_FORMAT = "tracemark-model/1"
WEIGHTS_FORMAT = "tracemark-weights/1"
"""Metadata format of weights for a model built by the user's own code (``--arch package.module:factory``)."""


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild a reference model: architecture name, input shape, class count."""

    arch: str
    input_shape: tuple[int, int, int]
    num_classes: int

    def to_dict(self) -> dict:
        return asdict(self)


def _small_cnn(c: int, h: int, w: int, k: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (h // 4) * (w // 4), 128),
        nn.ReLU(),
        nn.Linear(128, k),
    )


def _lenet(c: int, h: int, w: int, k: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * (h // 4) * (w // 4), 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, k),
    )


def _mlp(c: int, h: int, w: int, k: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(c * h * w, 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, k),
    )


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv + batch norm, with a 1x1 projection when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _resnet18(c: int, h: int, w: int, k: int, width: int = 64) -> nn.Module:
    """CIFAR-style ResNet-18: 3x3 stem (no max-pool), 4 stages of 2 blocks, global average pool, linear head.

    ``width`` is the first stage's channel count (stages have width, 2×, 4×, 8×); 64 is the standard one.
    """
    if h < 8 or w < 8:
        raise ModelFileError(f"resnet18 needs inputs of at least 8x8 pixels, not {h}x{w}")
    if width < 1:
        raise ModelFileError(f"resnet18 width must be a positive channel count, not {width}")
    layers: list[nn.Module] = [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    c_in = width
    for c_out, stride in ((width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)):
        layers += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * width, k)]
    return nn.Sequential(*layers)


def resnet18(input_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10, *, width: int = 64,
             seed: int | None = None) -> nn.Module:
    """The built-in CIFAR-style ResNet-18 at a chosen base ``width`` (64: the same model as ``build_model("resnet18")``).

    Only width 64 is a built-in architecture that :func:`save_model` records; save a narrower one as plain
    weights (``tracemark.data.factories.save_weights``) and rebuild it with this function.
    """
    c, h, w = (int(d) for d in input_shape)
    if seed is None:
        return _resnet18(c, h, w, int(num_classes), width=int(width))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _resnet18(c, h, w, int(num_classes), width=int(width))


ARCHITECTURES: dict[str, Callable[[int, int, int, int], nn.Module]] = {
    "small_cnn": _small_cnn,
    "lenet": _lenet,
    "mlp": _mlp,
    "resnet18": _resnet18,
}


def build_model(arch: str, input_shape: tuple[int, int, int], num_classes: int, seed: int | None = None) -> nn.Module:
    """A fresh reference model; ``seed`` fixes its initial weights."""
    if arch not in ARCHITECTURES:
        raise ModelFileError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    c, h, w = (int(d) for d in input_shape)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ARCHITECTURES[arch](c, h, w, num_classes)
    else:
        model = ARCHITECTURES[arch](c, h, w, num_classes)
    model.tracemark_spec = ModelSpec(arch, (c, h, w), int(num_classes))  # type: ignore[assignment]
    return model


def model_spec(model: nn.Module) -> ModelSpec | None:
    """The :class:`ModelSpec` of a model built by :func:`build_model`, else ``None``."""
    spec = getattr(model, "tracemark_spec", None)
    return spec if isinstance(spec, ModelSpec) else None


def model_bytes(model: nn.Module, spec: ModelSpec | None = None) -> bytes:
    """The safetensors bytes :func:`save_model` would write."""
    from safetensors.torch import save

    spec = spec or model_spec(model)
    if spec is None:
        raise ModelFileError("model has no architecture spec; build it with tracemark.build_model or pass spec=")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # one metadata entry: safetensors orders several entries differently from call to call,
    # and the same model must always give the same bytes (and hash)
    metadata = {"tracemark": json.dumps({"format": MODEL_FORMAT, "spec": spec.to_dict()}, sort_keys=True)}
    return save(state, metadata=metadata)


def save_model(model: nn.Module, path: str | Path, spec: ModelSpec | None = None) -> Path:
    """Write ``model`` as ``.safetensors`` with its architecture in the metadata (atomically)."""
    return atomic_write_bytes(path, model_bytes(model, spec), mode=0o644)


def spec_from_metadata(metadata: dict[str, str] | None, source: str) -> ModelSpec:
    """Parse the architecture spec that :func:`save_model` stores in safetensors metadata."""
    try:
        entry = json.loads((metadata or {}).get("tracemark", "{}"))
    except ValueError as exc:
        raise ModelFileError(f"{source}: malformed tracemark metadata ({exc})") from exc
    if entry.get("format") == WEIGHTS_FORMAT:
        raise ModelFileError(
            f"{source}: weights for a model built by your own code, not a built-in architecture; "
            "give the factory that builds it (--arch package.module:factory)"
        )
    if entry.get("format") != MODEL_FORMAT or "spec" not in entry:
        raise ModelFileError(
            f"{source}: safetensors file without tracemark architecture metadata; "
            "name the architecture that builds it (--arch NAME or package.module:factory on the command line; "
            "spec=ModelSpec(arch, input_shape, num_classes) in Python)"
        )
    try:
        raw = entry["spec"]
        return ModelSpec(str(raw["arch"]), tuple(int(d) for d in raw["input_shape"]), int(raw["num_classes"]))  # type: ignore[arg-type]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{source}: malformed architecture metadata ({exc})") from exc


def load_model_bytes(data: bytes, source: str = "<bytes>", spec: ModelSpec | None = None) -> nn.Module:
    """Rebuild a model from safetensors bytes (metadata spec unless ``spec`` is given)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        state = load(data)
        if spec is None:
            header_len = int.from_bytes(data[:8], "little")
            header = json.loads(data[8 : 8 + header_len])
            spec = spec_from_metadata(header.get("__metadata__"), source)
    except (SafetensorError, ValueError) as exc:
        raise ModelFileError(f"{source}: not a valid safetensors file ({exc})") from exc
    model = build_model(spec.arch, spec.input_shape, spec.num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelFileError(f"{source}: weights do not fit architecture {spec.arch!r} ({exc})") from exc
    model.eval()
    return model


def load_model(path: str | Path, spec: ModelSpec | None = None) -> nn.Module:
    """Load a ``.safetensors`` model written by :func:`save_model` (never unpickles)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no model file at {path}")
    return load_model_bytes(path.read_bytes(), str(path), spec)
