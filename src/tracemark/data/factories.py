"""Models built by the user's own code: ``package.module:factory`` import strings and plain weights files.

An import string runs code, so it is only ever taken from the person running tracemark (a
command-line ``--arch``, or a Python call): never from a model file's metadata, a package
manifest or a request. Weights files written here record the input shape and class count,
nothing that names code.

The factory convention: ``factory()`` returns an ``nn.Module``; if it has parameters named
``input_shape`` (a ``(C, H, W)`` tuple) and/or ``num_classes`` (an int), they are passed by
keyword. A factory (or its module) may declare ``tracemark_spec = {"input_shape": (C, H, W),
"num_classes": K}``, which tracemark then uses when no option gives them.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from tracemark._util.files import atomic_write_bytes
from tracemark.data.models import ARCHITECTURES, WEIGHTS_FORMAT, build_model
from tracemark.errors import (
    FactoryImportError,
    FactoryNotFoundError,
    FactoryResultError,
    FactoryStringError,
    InvalidOptionError,
    ModelFactoryError,
    ModelFileError,
    WeightsMismatchError,
)

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class Factory:
    """An imported factory: the import string, the callable, and what its ``tracemark_spec`` declares."""

    name: str
    build: Callable[..., object]
    input_shape: Shape | None
    num_classes: int | None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def parse_import_string(text: str) -> tuple[str, str]:
    """``package.module:factory`` as ``(module, attribute)``; :class:`FactoryStringError` if malformed."""
    module, sep, attr = text.partition(":")
    if not sep:
        raise FactoryStringError(
            f"--arch {text!r} is neither a built-in architecture ({', '.join(sorted(ARCHITECTURES))}) "
            "nor package.module:factory (no colon)"
        )
    if not all(part.isidentifier() for part in module.split(".")) or not all(p.isidentifier() for p in attr.split(".")):
        raise FactoryStringError(f"--arch {text!r}: write package.module:factory, with Python names on both sides")
    return module, attr


def _declared_spec(obj: object, name: str) -> tuple[Shape | None, int | None]:
    raw = getattr(obj, "tracemark_spec", None)
    if raw is None:
        return None, None
    if not isinstance(raw, Mapping):
        raise ModelFactoryError(f"{name}: tracemark_spec must be a dict with input_shape and num_classes")
    shape, classes = raw.get("input_shape"), raw.get("num_classes")
    try:
        shape = None if shape is None else check_shape(tuple(int(d) for d in shape))
        classes = None if classes is None else int(classes)
    except (TypeError, ValueError) as exc:
        raise ModelFactoryError(f"{name}: tracemark_spec is malformed ({exc})") from exc
    return shape, classes


def check_shape(shape: tuple[int, ...]) -> Shape:
    """``shape`` if it is three positive ints (C, H, W), else :class:`ValueError`."""
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input shape must be three positive numbers C,H,W, not {shape}")
    return shape  # type: ignore[return-value]


def import_factory(text: str) -> Factory:
    """Import the factory an import string names. The current directory is importable, but last on the path, so
    nothing in it (a suspect's files, say) can shadow an installed module that tracemark imports later."""
    module_name, attr = parse_import_string(text)
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module: ModuleType = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may fail in any way while importing
        raise FactoryImportError(f"--arch {text}: cannot import module {module_name!r} ({_first_line(exc)})") from exc
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise FactoryNotFoundError(f"--arch {text}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise FactoryResultError(f"--arch {text}: {attr!r} is a {type(obj).__name__}, not a function or class")
    shape, classes = _declared_spec(obj, text)
    if shape is None and classes is None:
        shape, classes = _declared_spec(module, text)
    return Factory(text, obj, shape, classes)


def call_factory(factory: Factory, input_shape: Shape | None, num_classes: int | None, seed: int | None = None) -> nn.Module:
    """Call the factory (passing ``input_shape``/``num_classes`` if it takes them); ``seed`` fixes initial weights."""
    try:
        params = inspect.signature(factory.build).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    offered = {"input_shape": input_shape, "num_classes": num_classes}
    kwargs = {k: v for k, v in offered.items() if k in params}
    missing = [k for k, v in kwargs.items() if v is None]
    if missing:
        raise InvalidOptionError(f"--arch {factory.name} takes {', '.join(missing)}: give --input-shape C,H,W / --classes K")
    required = [p.name for p in params.values() if p.default is p.empty and p.name not in offered
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        raise FactoryResultError(f"--arch {factory.name} needs argument(s) {', '.join(required)}; a factory may take "
                                 "only input_shape and num_classes (wrap it in a function that fixes the rest)")
    try:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            module = factory.build(**kwargs)
    except Exception as exc:  # the user's factory may fail in any way
        raise FactoryResultError(f"--arch {factory.name}: the factory raised {_first_line(exc)}") from exc
    if not isinstance(module, nn.Module):
        raise FactoryResultError(f"--arch {factory.name} returned a {type(module).__name__}, not a torch.nn.Module")
    return module


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: ``.safetensors``, or a ``.pt``/``.pth`` state dict read with ``weights_only=True``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from tracemark.trust.modelfiles import PICKLE_SUFFIXES, load_state_dict_file

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no weights file at {path}")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return load_state_dict_file(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a valid safetensors file ({_first_line(exc)})") from exc


def _listed(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")


def load_weights(module: nn.Module, path: str | Path, arch: str) -> nn.Module:
    """Load a weights file into ``module`` strictly; :class:`WeightsMismatchError` says which keys or shapes differ."""
    state = read_state_dict(path)
    expected = module.state_dict()
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        problems.append(f"missing keys {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listed(unexpected)}")
    shapes = [f"{k} is {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if shapes:
        problems.append(f"shape mismatch: {_listed(shapes)}")
    if problems:
        raise WeightsMismatchError(f"{path} does not fit --arch {arch}: {'; '.join(problems)}")
    module.load_state_dict(state)
    module.eval()
    return module


def weights_metadata(path: str | Path) -> tuple[Shape | None, int | None]:
    """Input shape and class count recorded in a weights file written by :func:`save_weights` (else ``None``s)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            entry = json.loads((handle.metadata() or {}).get("tracemark", "{}"))
        if entry.get("format") != WEIGHTS_FORMAT:
            return None, None
        return check_shape(tuple(int(d) for d in entry["input_shape"])), int(entry["num_classes"])
    except Exception:  # an unreadable or foreign header just records nothing; loading reports the real problem
        return None, None


def weights_bytes(module: nn.Module, input_shape: Shape, num_classes: int) -> bytes:
    """The module's state dict as safetensors bytes, recording only the input shape and class count."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    entry = {"format": WEIGHTS_FORMAT, "input_shape": list(input_shape), "num_classes": int(num_classes)}
    return save(state, metadata={"tracemark": json.dumps(entry, sort_keys=True)})


def save_weights(module: nn.Module, path: str | Path, input_shape: Shape, num_classes: int) -> Path:
    """Write :func:`weights_bytes` to ``path`` (atomically)."""
    return atomic_write_bytes(path, weights_bytes(module, input_shape, num_classes), mode=0o644)


@dataclass
class BuiltModel:
    """A model built from ``--arch``: the module, its input shape and class count, and whether it came from a factory."""

    module: nn.Module
    input_shape: Shape
    num_classes: int
    from_factory: bool


def build_arch(arch: str, *, weights: str | Path | None = None, input_shape: Shape | None = None,
               num_classes: int | None = None, default_shape: Shape | None = None,
               default_classes: int | None = None, seed: int | None = None) -> BuiltModel:
    """Build ``arch`` (a built-in name or ``package.module:factory``) and load ``weights`` into it if given.

    The input shape and class count come from, in order: ``input_shape``/``num_classes``, the
    factory's ``tracemark_spec``, the weights file's metadata, then ``default_shape``/``default_classes``.
    """
    factory = None if arch in ARCHITECTURES else import_factory(arch)
    file_shape, file_classes = weights_metadata(weights) if weights is not None else (None, None)
    shape = input_shape or (factory and factory.input_shape) or file_shape or default_shape
    classes = num_classes or (factory and factory.num_classes) or file_classes or default_classes
    if factory is None:
        if shape is None or classes is None:
            raise InvalidOptionError(f"--arch {arch} needs the input shape and class count: give --input-shape C,H,W and --classes K")
        module = build_model(arch, shape, classes, seed=seed)
    else:
        module = call_factory(factory, shape, classes, seed=seed)
    if weights is not None:
        load_weights(module, weights, arch)
    if shape is None or classes is None:
        raise InvalidOptionError(f"--arch {arch}: the input shape and class count are unknown; give --input-shape C,H,W "
                                 "and --classes K (or declare tracemark_spec beside the factory)")
    return BuiltModel(module, shape, int(classes), factory is not None)
