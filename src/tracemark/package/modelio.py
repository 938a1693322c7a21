"""Model bytes in and out of a package: format detection, and rebuilding from an in-memory buffer.

Safetensors are turned into tensors that point straight into the decrypted buffer (no copy),
and a tracemark architecture reference rebuilds the ``nn.Module`` around them; ONNX becomes an
onnxruntime session from bytes; a torch.export program is loaded from an in-memory stream.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from tracemark.data.models import ModelSpec, build_model, spec_from_metadata
from tracemark.errors import ModelFileError

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
ZIP_MAGIC = b"PK\x03\x04"


def safetensors_header(head: bytes, source: str) -> dict | None:
    """The JSON header of safetensors data starting with ``head``, or ``None`` if it is not safetensors."""
    if len(head) < 10:
        return None
    n = int.from_bytes(head[:8], "little")
    if not 2 <= n <= 100 << 20 or head[8:9] != b"{":
        return None
    if len(head) < 8 + n:
        raise ModelFileError(f"{source}: safetensors header longer than the data ({n} bytes)")
    try:
        header = json.loads(head[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return header if isinstance(header, dict) else None


def detect_format(head: bytes, name: str) -> str:
    """``safetensors``, ``torch.export`` (a .pt2 zip) or ``onnx``, from the first bytes and the file name."""
    if safetensors_header(head, name) is not None:
        return "safetensors"
    if head.startswith(ZIP_MAGIC):
        return "torch.export"
    if name.endswith(".onnx") or head[:1] == b"\x08":  # ModelProto starts with ir_version (field 1, varint)
        return "onnx"
    raise ModelFileError(f"{name}: not safetensors, ONNX or a torch.export .pt2 program; pass model_format=")


def architecture_of(header: dict, source: str) -> dict | None:
    """The tracemark architecture reference stored in safetensors metadata, or ``None``."""
    metadata = header.get("__metadata__")
    if not metadata or "tracemark" not in metadata:
        return None
    return spec_from_metadata(metadata, source).to_dict()


def tensors_from_buffer(buffer: bytearray, source: str = "<package>") -> dict[str, torch.Tensor]:
    """Tensors of safetensors data held in ``buffer``, as views into it (no copy)."""
    base = 8 + int.from_bytes(buffer[:8], "little")
    header = safetensors_header(bytes(buffer[: min(base, 8 + (100 << 20))]), source)
    if header is None:
        raise ModelFileError(f"{source}: decrypted model is not valid safetensors")
    tensors: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{source}: tensor {name!r} has a malformed or unsupported header entry ({exc})") from exc
        numel = 1
        for d in shape:
            numel *= d
        if not 0 <= begin <= end <= len(buffer) - base or end - begin != numel * dtype.itemsize:
            raise ModelFileError(f"{source}: tensor {name!r} lies outside the data or has the wrong size")
        if numel == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
        else:
            tensors[name] = torch.frombuffer(buffer, dtype=dtype, count=numel, offset=base + begin).view(shape)
    return tensors


def module_from_tensors(tensors: dict[str, torch.Tensor], architecture: dict, source: str) -> torch.nn.Module:
    """Rebuild a tracemark reference model around ``tensors`` (parameters share their memory)."""
    try:
        spec = ModelSpec(str(architecture["arch"]), tuple(int(d) for d in architecture["input_shape"]), int(architecture["num_classes"]))  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{source}: malformed architecture reference ({exc})") from exc
    with torch.device("meta"):
        model = build_model(spec.arch, spec.input_shape, spec.num_classes)
    try:
        model.load_state_dict(tensors, assign=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{source}: weights do not fit architecture {spec.arch!r} ({exc})") from exc
    return model.eval()


def onnx_session(buffer: bytearray, source: str) -> Any:
    """An onnxruntime InferenceSession built from the bytes in memory."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(bytes(buffer), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelFileError(f"{source}: onnxruntime cannot load the decrypted model ({exc})") from exc


def exported_module(buffer: bytearray, source: str) -> torch.nn.Module:
    """The ``nn.Module`` of a torch.export program held in memory, checked first (see :mod:`tracemark.trust.modelfiles`)."""
    from tracemark.targets.local import exported_module as module_of
    from tracemark.trust.modelfiles import load_exported_program

    module, _ = module_of(load_exported_program(buffer, name=source))
    return module
