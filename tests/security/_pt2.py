"""Hostile torch.export archives: each one runs a payload under a plain ``torch.export.load``.

Each builder takes the path of a marker file that its payload creates, so a test can tell whether
any code ran. ``genuine`` is an honest archive of a tiny CNN for 1x8x8 inputs.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from typing import Callable

import torch
from torch import nn

INPUT_SHAPE = (1, 8, 8)


class Payload:
    """Unpickling this creates the marker file (``open(marker, "w")``)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def tiny_module() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 10)).eval()


def genuine(dynamic: bool = True) -> bytes:
    """An honest archive (dynamic batch, or fixed at 2 inputs)."""
    shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic else None
    program = torch.export.export(tiny_module(), (torch.rand(2, *INPUT_SHAPE),), dynamic_shapes=shapes)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def rewrite(data: bytes, change: Callable[[dict[str, bytes], str], None]) -> bytes:
    """The archive with its members changed in place by ``change(members, root)``."""
    source = zipfile.ZipFile(io.BytesIO(data))
    members = {info.filename: source.read(info) for info in source.infolist()}
    root = next(iter(members)).split("/")[0]
    change(members, root)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, raw in members.items():
            archive.writestr(name, raw)
    return out.getvalue()


def pickled_weight(marker: str) -> bytes:
    """The first weight marked ``use_pickle``, holding a ``__reduce__`` payload."""
    def change(m: dict[str, bytes], root: str) -> None:
        config = json.loads(m[f"{root}/data/weights/model_weights_config.json"])
        first = next(iter(config["config"].values()))
        first["use_pickle"] = True
        m[f"{root}/data/weights/model_weights_config.json"] = json.dumps(config).encode()
        m[f"{root}/data/weights/{first['path_name']}"] = pickle.dumps(Payload(marker))
    return rewrite(genuine(), change)


def opaque_constant(marker: str) -> bytes:
    """An opaque-object constant (``pickle.loads``)."""
    def change(m: dict[str, bytes], root: str) -> None:
        entry = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
        m[f"{root}/data/constants/model_constants_config.json"] = json.dumps({"config": {"evil": entry}}).encode()
        m[f"{root}/data/constants/opaque_obj_0"] = pickle.dumps(Payload(marker))
    return rewrite(genuine(), change)


def guard_code(marker: str) -> bytes:
    """Guard code, which ``program.module()`` passes to ``exec``."""
    def change(m: dict[str, bytes], root: str) -> None:
        program = json.loads(m[f"{root}/models/model.json"])
        program["guards_code"] = [f"open({marker!r}, 'w') is not None"]
        m[f"{root}/models/model.json"] = json.dumps(program).encode()
    return rewrite(genuine(), change)


def sympy_expression(marker: str) -> bytes:
    """A symbolic shape expression, which the deserializer hands to ``sympy.sympify`` (``eval``)."""
    def change(m: dict[str, bytes], root: str) -> None:
        text = m[f"{root}/models/model.json"].decode()
        start = text.index('"expr_str": "') + len('"expr_str": "')
        end = text.index('"', start)
        evil = f"Symbol('s0') if open('{marker}', 'w') else 0"
        m[f"{root}/models/model.json"] = (text[:start] + evil + text[end:]).encode()
    return rewrite(genuine(), change)


def pickled_sample_inputs(marker: str) -> bytes:
    """Example inputs that fail ``weights_only=True``, so torch falls back to a full unpickle."""
    def change(m: dict[str, bytes], root: str) -> None:
        buffer = io.BytesIO()
        torch.save(Payload(marker), buffer)
        m[f"{root}/data/sample_inputs/model.pt"] = buffer.getvalue()
    return rewrite(genuine(), change)


PAYLOADS: dict[str, Callable[[str], bytes]] = {
    "pickled_weight": pickled_weight,
    "opaque_constant": opaque_constant,
    "guard_code": guard_code,
    "sympy_expression": sympy_expression,
    "pickled_sample_inputs": pickled_sample_inputs,
}
"""Every archive here runs its payload under a plain ``torch.export.load(...).module()``."""


def with_member(extra: str, raw: bytes = b"\x7fELF") -> bytes:
    """The honest archive plus one member (e.g. an AOTInductor shared library)."""
    return rewrite(genuine(), lambda m, root: m.__setitem__(f"{root}/{extra}", raw))


def with_target(target: str) -> bytes:
    """The honest archive with its ReLU call replaced by ``target``."""
    def change(m: dict[str, bytes], root: str) -> None:
        text = m[f"{root}/models/model.json"].decode()
        assert "torch.ops.aten.relu.default" in text
        m[f"{root}/models/model.json"] = text.replace("torch.ops.aten.relu.default", target).encode()
    return rewrite(genuine(), change)
