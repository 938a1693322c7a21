"""The secret drawing of a ``content`` key: generated from the seed, or read from a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tracemark._util import rng
from tracemark.errors import KeyFileError


def generate_drawing(seed: bytes, size: int) -> np.ndarray:
    """A random stroke drawing, ``size``×``size`` uint8 (0 = transparent, 255 = full ink).

    Small sizes get a random binary pattern with at least a third of the pixels inked;
    larger ones a polyline through five random points.
    """
    if size < 2:
        raise ValueError("drawing size must be at least 2 pixels")
    if size <= 4:
        values = rng.uniform(seed, "drawing/pattern", size * size).reshape(size, size)
        ink = values < 0.5
        threshold = np.sort(values.ravel())[max(size * size // 3, 2) - 1]
        ink |= values <= threshold
        return (ink * 255).astype(np.uint8)
    canvas = np.zeros((size, size), dtype=np.uint8)
    points = rng.uniform(seed, "drawing/points", 10).reshape(5, 2) * (size - 1)
    for (r0, c0), (r1, c1) in zip(points[:-1], points[1:]):
        steps = int(np.ceil(max(abs(r1 - r0), abs(c1 - c0)))) * 2 + 1
        rows = np.rint(np.linspace(r0, r1, steps)).astype(int)
        cols = np.rint(np.linspace(c0, c1, steps)).astype(int)
        canvas[rows, cols] = 255
    return canvas


def read_drawing_png(path: str | Path, size: int) -> np.ndarray:
    """Read a PNG as a ``size``×``size`` uint8 ink mask (alpha channel if present, else darkness)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGBA", "LA") or "transparency" in image.info:
                ink = image.convert("RGBA").getchannel("A")
            else:
                gray = image.convert("L")
                # dark strokes on a light background are the usual drawing; invert if so
                arr = np.asarray(gray)
                ink = gray if arr.mean() < 128 else Image.fromarray(255 - arr)
            ink = ink.resize((size, size), Image.Resampling.BOX)
            return np.asarray(ink, dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError) as exc:
        raise KeyFileError(f"{path}: cannot read drawing as an image ({exc})") from exc
