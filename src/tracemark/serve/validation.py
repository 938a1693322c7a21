"""Turning request bodies into model inputs, refusing anything malformed with a message that names it.

``POST /v1/predict`` reads three kinds of body (:func:`body_kind`): JSON ``{"inputs": [...]}``, a ``.npy`` file
(``application/x-npy``) and raw little-endian bytes (``application/octet-stream`` with ``X-Tracemark-Shape`` and
``X-Tracemark-Dtype``). A tensor body's :class:`TensorHead` (shape, dtype) is read first, from its header alone, so
that its input count is charged before any value is read; :func:`tensor_inputs` then checks it like JSON.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tracemark.serve.errors import ImageTooLargeError, InvalidInputError, UnsupportedMediaTypeError
from tracemark.trust.requests import MAX_SHAPE_HEADER, NPY_MAX_HEADER, TENSOR_DTYPES, ImageBounds, open_image

_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class InputSpec:
    """What the model takes: the shape of one input, the largest batch, and the allowed value range."""

    input_shape: tuple[int, ...]
    max_batch: int = 64
    value_range: tuple[float, float] | None = (0.0, 1.0)

    @property
    def size(self) -> int:
        return math.prod(self.input_shape)

    def to_dict(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_shape), "max_batch": self.max_batch,
                "value_range": list(self.value_range) if self.value_range else None}


def check_batch_size(n: int, spec: InputSpec) -> None:
    """Refuse (422) an empty batch or one over ``spec.max_batch``."""
    if n == 0:
        raise InvalidInputError("'inputs' is empty; send at least one input")
    if n > spec.max_batch:
        raise InvalidInputError(f"batch of {n} inputs is larger than the maximum of {spec.max_batch}; split it")


def parse_json_inputs(body: bytes, spec: InputSpec) -> np.ndarray:
    """A float32 batch (N, *input_shape) from ``{"inputs": [...]}``: nested N×C×H×W or flat N×(C·H·W) lists."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"body is not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise InvalidInputError("body is nested too deeply to be an input batch") from exc
    if not isinstance(doc, dict):
        raise InvalidInputError(f'body must be a JSON object {{"inputs": [...]}}, not a {type(doc).__name__}')
    extra = sorted(set(doc) - {"inputs"})
    if extra:
        raise InvalidInputError(f"unknown field(s) {', '.join(map(repr, extra))}; the body is {{\"inputs\": [...]}}")
    if "inputs" not in doc:
        raise InvalidInputError("body has no 'inputs' field")
    inputs = doc["inputs"]
    if not isinstance(inputs, list):
        raise InvalidInputError(f"'inputs' must be a list of inputs, not a {type(inputs).__name__}")
    check_batch_size(len(inputs), spec)
    try:
        raw = np.asarray(inputs)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInputError("'inputs' is ragged: every input must have the same nested list shape") from exc
    if _no_literals(body):
        fast = _numbers(raw, spec)
        if fast is not None:
            return fast
    if raw.dtype.kind == "b" or (raw.dtype.kind in "iuf" and (b"true" in body or b"false" in body)):  # NumPy turns mixed ones into 1 and 0
        raise InvalidInputError("'inputs' holds true/false; values must be numbers")
    if raw.dtype.kind not in "iuf":
        raise InvalidInputError("'inputs' holds non-numbers (strings, null, objects) or is ragged; values must be numbers")
    return _checked_values(_shaped(raw, spec).astype(np.float64, copy=False), spec)


def _no_literals(body: bytes) -> bool:
    """Whether the body holds no ``true``, ``false`` or ``null`` (one fast byte search each for "r" and "l",
    which no JSON number, nor the key ``"inputs"``, contains)."""
    return b"r" not in body and b"l" not in body


def _numbers(raw: np.ndarray, spec: InputSpec) -> np.ndarray | None:
    """The common case in one pass: a well-shaped batch of numbers inside the value range, as float32.
    ``None`` for anything else, which the full checks then reject with a message naming the problem."""
    if spec.value_range is None or max(map(abs, spec.value_range)) > _FLOAT32_MAX:
        return None
    lo, hi = spec.value_range
    if raw.dtype.kind not in "iuf" or raw.ndim < 2 or raw.size == 0 or not lo <= raw.min() <= raw.max() <= hi:
        return None  # strings, ragged, empty, outside the range, NaN (which fails every comparison)
    try:
        shaped = _shaped(raw, spec)
    except InvalidInputError:
        return None
    return np.ascontiguousarray(shaped, dtype=np.float32)


def _shaped(raw: np.ndarray, spec: InputSpec) -> np.ndarray:
    """``raw`` as (N, *input_shape): nested inputs as they are, flat ones reshaped."""
    shape = tuple(raw.shape[1:])
    if shape == (spec.size,) and raw.ndim == 2:
        return raw.reshape(len(raw), *spec.input_shape)
    if shape != spec.input_shape:
        raise InvalidInputError(
            f"each input has shape {list(shape)}; the model takes {list(spec.input_shape)} (or flat [{spec.size}])"
        )
    return raw


def _checked_values(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    finite = np.isfinite(x)
    if not finite.all():
        bad = int(np.argwhere(~finite.reshape(len(x), -1).all(axis=1))[0][0])
        raise InvalidInputError(f"input {bad} contains NaN or infinity")
    if spec.value_range is not None:
        lo, hi = spec.value_range
        outside = (x < lo) | (x > hi)
        if outside.any():
            bad = int(np.argwhere(outside.reshape(len(x), -1).any(axis=1))[0][0])
            raise InvalidInputError(
                f"input {bad} has values in [{x[bad].min():g}, {x[bad].max():g}], outside the allowed range [{lo:g}, {hi:g}]"
            )
    out = x.astype(np.float32)
    if not np.isfinite(out).all():
        raise InvalidInputError("inputs hold values too large for float32")
    return np.ascontiguousarray(out)


NPY_TYPES = ("application/x-npy", "application/npy")
RAW_TYPES = ("application/octet-stream",)
BODY_TYPES = ("application/json", *NPY_TYPES, *RAW_TYPES)
"""The ``Content-Type`` values ``POST /v1/predict`` reads (no ``Content-Type`` at all is read as JSON)."""


def body_kind(content_type: str | None) -> str:
    """``"json"``, ``"npy"`` or ``"raw"`` for a request's ``Content-Type`` (parameters such as ``charset`` ignored);
    415 for any other type."""
    media = (content_type or "").partition(";")[0].strip().lower()
    if not media or media == "application/json" or media.endswith("+json"):
        return "json"
    if media in NPY_TYPES:
        return "npy"
    if media in RAW_TYPES:
        return "raw"
    hint = " (curl -d sends it: add -H 'Content-Type: application/json')" if media == "application/x-www-form-urlencoded" else ""
    raise UnsupportedMediaTypeError(f"Content-Type {media[:64]!r} is not read here{hint}; send application/json, "
                                    "application/x-npy, or application/octet-stream with X-Tracemark-Shape")


@dataclass(frozen=True)
class TensorHead:
    """A raw tensor body as its header describes it, before any value is read: shape, dtype, the byte offset where the
    values start, and whether they are in Fortran (column-major) order."""

    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int = 0
    fortran: bool = False

    @property
    def count(self) -> int:
        """The number of inputs (the first dimension)."""
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        """The bytes its values take."""
        return math.prod(self.shape) * self.dtype.itemsize


def _tensor_dtype(dtype: np.dtype, where: str) -> np.dtype:
    if dtype.fields is not None or dtype.subdtype is not None or dtype.name not in TENSOR_DTYPES:
        why = "; object arrays (pickles) are never loaded" if dtype.hasobject else ""
        raise InvalidInputError(f"{where} holds {dtype.name} ({dtype.str!r}){why}; send {', '.join(TENSOR_DTYPES)}")
    return dtype


def _tensor_shape(shape: tuple[int, ...], where: str) -> tuple[int, ...]:
    if not shape or any(d < 0 for d in shape):
        raise InvalidInputError(f"{where} has shape {list(shape)}; send a batch of shape (N, C, H, W) or (N, C*H*W)")
    return shape


def npy_head(body: bytes) -> TensorHead:
    """The :class:`TensorHead` of a ``.npy`` body (format 1.0 or 2.0), from a header of at most
    :data:`~tracemark.trust.requests.NPY_MAX_HEADER` bytes; object dtypes (pickles) are refused, never unpickled."""
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
    except ValueError as exc:
        raise InvalidInputError(f"body is not a .npy file ({exc}); write it with numpy.save") from exc
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise InvalidInputError(f"bad .npy header: format version {version[0]}.{version[1]} is not read here (1.0 or 2.0)")
    length = int.from_bytes(body[8:10] if version == (1, 0) else body[8:12], "little")
    if length > NPY_MAX_HEADER:
        raise InvalidInputError(f"bad .npy header: {length} bytes long; at most {NPY_MAX_HEADER} are read")
    try:
        shape, fortran, dtype = readers[version](stream, max_header_size=NPY_MAX_HEADER)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError, OverflowError) as exc:
        raise InvalidInputError(f"bad .npy header ({str(exc).splitlines()[0][:200]})") from exc
    return TensorHead(_tensor_shape(tuple(shape), "the .npy array"), _tensor_dtype(dtype, "the .npy array"), stream.tell(), bool(fortran))


def raw_head(shape: str | None, dtype: str | None) -> TensorHead:
    """The :class:`TensorHead` of an ``application/octet-stream`` body from its ``X-Tracemark-Shape`` (``N,C,H,W`` or
    ``N,C*H*W``) and ``X-Tracemark-Dtype`` (default float32) headers; values are little-endian, C order."""
    if shape is None:
        raise InvalidInputError("an application/octet-stream body needs the header X-Tracemark-Shape: N,C,H,W (or N,C*H*W)")
    parts = shape.split(",") if len(shape) <= MAX_SHAPE_HEADER else []
    if not 1 <= len(parts) <= 8 or not all(p.strip().isdigit() and p.strip().isascii() for p in parts):
        raise InvalidInputError(f"X-Tracemark-Shape {shape[:MAX_SHAPE_HEADER]!r} is not comma-separated dimensions N,C,H,W (or N,C*H*W)")
    name = (dtype or "float32").strip().lower()
    if name not in TENSOR_DTYPES:
        raise InvalidInputError(f"X-Tracemark-Dtype {name[:32]!r} is not read here; send {', '.join(TENSOR_DTYPES)}")
    return TensorHead(_tensor_shape(tuple(int(p) for p in parts), "X-Tracemark-Shape"), np.dtype(name).newbyteorder("<"))


def tensor_inputs(body: bytes, head: TensorHead, spec: InputSpec) -> np.ndarray:
    """A float32 batch (N, *input_shape) from a tensor body described by ``head``: the shape and byte count checked
    before the values are read, uint8 taken as 0..255 pixels and scaled to [0, 1] (as uploaded images are), then the
    same finite and range checks as JSON."""
    if head.count == 0:
        raise InvalidInputError(f"the tensor of shape {list(head.shape)} holds no inputs; send at least one")
    check_batch_size(head.count, spec)
    dims = head.shape[1:]
    if dims != spec.input_shape and dims != (spec.size,):
        raise InvalidInputError(f"the tensor has shape {list(head.shape)}: each input {list(dims)}; the model takes "
                                f"{list(spec.input_shape)} (or flat [{spec.size}])")
    values = len(body) - head.offset
    if values != head.nbytes:
        raise InvalidInputError(f"the body holds {values} bytes of values; shape {list(head.shape)} of {head.dtype.name} is "
                                f"{head.nbytes} bytes ({'truncated' if values < head.nbytes else 'trailing bytes'})")
    raw = np.frombuffer(body, head.dtype, count=math.prod(head.shape), offset=head.offset)
    raw = (raw.reshape(head.shape[::-1]).T if head.fortran else raw.reshape(head.shape)).reshape(head.count, *spec.input_shape)
    if raw.dtype.kind == "u":
        raw = raw.astype(np.float32) / 255.0
    x = _numbers(raw, spec)
    if x is None:
        x = _checked_values(raw.astype(np.float64), spec)
    return x if x.flags.writeable else x.copy()  # a view of the body is read-only; hooks and torch want their own


def _images_ok(spec: InputSpec) -> None:
    if len(spec.input_shape) != 3 or spec.input_shape[0] not in (1, 3):
        raise InvalidInputError(f"this model takes inputs of shape {list(spec.input_shape)}, not images; send JSON arrays")


def _open_image(data: bytes, name: str, bounds: ImageBounds) -> Any:
    """``data`` opened as an image of one of ``bounds.formats``, its header read and its size checked; no pixel decoded yet."""
    return open_image(io.BytesIO(data), name, bounds, unreadable=InvalidInputError, too_large=ImageTooLargeError,
                      hint="resize it before sending")


def _pixels(img: Any, spec: InputSpec, name: str) -> np.ndarray:
    """The decoded image as a float32 C×H×W input in [0, 1], resized to the model's H×W."""
    from PIL import Image

    channels, height, width = spec.input_shape
    mode = "L" if channels == 1 else "RGB"
    try:
        img.draft(mode, (width, height))  # JPEG: decode at the smallest scale still at least the model's size
        converted = img.convert(mode)
        if converted.size != (width, height):
            converted = converted.resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(converted, dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidInputError(f"{name} is not a readable image ({type(exc).__name__}: {exc})") from exc
    pixels = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return _checked_values(pixels[None].astype(np.float64), spec)[0]


def decode_images(files: list[tuple[str, bytes]], spec: InputSpec, bounds: ImageBounds = ImageBounds()) -> np.ndarray:
    """A batch from uploaded images ``[(name, bytes), ...]``: every header is read and checked against ``bounds``
    (formats, pixels per image and per request) before any image is decoded."""
    check_batch_size(len(files), spec)
    _images_ok(spec)
    opened: list[tuple[str, Any]] = []
    try:
        total = 0
        for i, (name, data) in enumerate(files):
            img = _open_image(data, name or f"image {i}", bounds)
            opened.append((name or f"image {i}", img))
            total += img.width * img.height
            if total > bounds.max_request_pixels:
                raise ImageTooLargeError(f"the images of this request have more than {bounds.max_request_pixels} pixels together; "
                                         "send fewer or smaller images per request")
        return np.stack([_pixels(img, spec, name) for name, img in opened])
    finally:
        for _, img in opened:
            img.close()


def decode_image(data: bytes, spec: InputSpec, name: str = "image", bounds: ImageBounds = ImageBounds()) -> np.ndarray:
    """One uploaded image (PNG, JPEG, WebP) as a float32 C×H×W input in [0, 1], resized to the model's H×W."""
    return decode_images([(name, data)], spec, bounds)[0]


__all__ = ["BODY_TYPES", "InputSpec", "TensorHead", "body_kind", "check_batch_size", "npy_head", "parse_json_inputs", "raw_head",
           "tensor_inputs", "decode_image", "decode_images"]
