"""Bounds on what one HTTP request from a stranger may cost the server, checked before the costly work.

The prediction server (:mod:`tracemark.serve`) admits a request in this order, each step cheaper than
the next: the body size (``Content-Length`` and the bytes as they arrive), the API key, then the
client's rate limit charged with the number of inputs counted *from the raw bytes*
(:func:`count_json_inputs`, :func:`count_multipart_parts`; a raw tensor body's count is the first dimension of
its shape, from the ``X-Tracemark-Shape`` header or a ``.npy`` header of at most :data:`NPY_MAX_HEADER` bytes),
and only then parsing and decoding. Images are bounded by :class:`ImageBounds`, read from each image's header
before any pixel is decoded; raw tensors by :data:`TENSOR_DTYPES` (never an object array, so never a pickle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

_STEP = np.zeros(256, np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1


@dataclass(frozen=True)
class ImageBounds:
    """How much decoding one request's images may cost.

    ``max_pixels`` bounds one image (width × height, from its header), ``max_request_pixels`` all the images
    of one request together; ``formats`` are the only decoders Pillow may use (no PostScript, no TIFF plugins).
    Pillow's own decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``) stays on behind these.
    """

    max_pixels: int = 4096 * 4096
    max_request_pixels: int = 64 * 1024 * 1024
    formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP")

    def __post_init__(self) -> None:
        if not 1 <= self.max_pixels <= self.max_request_pixels:
            raise ValueError(f"image bounds need 1 <= max_pixels <= max_request_pixels, got {self.max_pixels}, {self.max_request_pixels}")


def open_image(source: Any, name: str, bounds: ImageBounds, *, unreadable: type[Exception], too_large: type[Exception],
               hint: str) -> Any:
    """``source`` (a path or a binary file) opened by Pillow as one of ``bounds.formats``, its header read and its size
    checked against ``bounds.max_pixels``; no pixel is decoded yet. A file Pillow cannot read raises ``unreadable``, one
    too large ``too_large``, each naming ``name`` and ending with ``hint`` (what the sender should do)."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(source, formats=bounds.formats)
    except Image.DecompressionBombError as exc:
        raise too_large(f"{name}: refused as a decompression bomb ({exc}); {hint}") from exc
    except UnidentifiedImageError as exc:
        raise unreadable(f"{name}: not a readable image (not a {', '.join(bounds.formats)} file)") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise unreadable(f"{name}: not a readable image ({type(exc).__name__}: {exc})") from exc
    if img.width * img.height > bounds.max_pixels:
        img.close()
        raise too_large(f"{name}: {img.width}×{img.height} pixels, more than the {bounds.max_pixels} decoded per image; {hint}")
    return img


COUNT_JSON_ABOVE = 16 << 10
"""JSON bodies larger than this (16 KiB) are counted from their raw bytes before parsing; a smaller one costs less
to parse than a count saves, and its exact count is charged once it is parsed."""


NPY_MAX_HEADER = 1024
"""Longest ``.npy`` header read from a request (bytes; numpy's own bound is 10,000). A batch's shape and dtype take
under 128; the header is parsed (``ast.literal_eval``) only once its length is checked."""
TENSOR_DTYPES = ("float32", "float16", "float64", "uint8")
"""The element types a raw tensor body may hold (any byte order in a ``.npy``; little-endian in an octet stream)."""
MAX_SHAPE_HEADER = 128
"""Longest ``X-Tracemark-Shape`` header read (characters)."""


def count_json_inputs(body: bytes) -> int:
    """How many inputs a ``{"inputs": [...]}`` body holds, counted without parsing it: the arrays or objects
    opened at nesting depth 3 (object, ``inputs`` list, one input). Brackets inside strings can make it
    wrong, but such a body is refused when parsed; the server charges the exact count then."""
    steps = _STEP[np.frombuffer(body, np.uint8)]
    brackets = steps[np.flatnonzero(steps)]
    depth = np.cumsum(brackets, dtype=np.int64)
    return int(np.count_nonzero((brackets == 1) & (depth == 3)))


def multipart_boundary(content_type: str) -> bytes | None:
    """The ``boundary`` parameter of a ``multipart/form-data`` content type (``None`` if there is none)."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        return None
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary" and value.strip().strip('"'):
            return value.strip().strip('"').encode("latin-1")
    return None


def count_multipart_parts(body: bytes, boundary: bytes) -> int:
    """At least as many parts as a multipart body holds, without parsing it: its ``--boundary`` delimiters
    less the closing one (a parser splits wherever the delimiter occurs, so no part hides from this count)."""
    return max(0, body.count(b"--" + boundary) - 1)


__all__ = ["COUNT_JSON_ABOVE", "MAX_SHAPE_HEADER", "NPY_MAX_HEADER", "TENSOR_DTYPES", "ImageBounds", "count_json_inputs", "count_multipart_parts", "multipart_boundary"]
