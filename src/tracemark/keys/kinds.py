"""How each key kind turns its stored material and seed into trigger inputs.

All four functions are pure: the same key material gives byte-identical float32 arrays.
"""

from __future__ import annotations

import numpy as np

from tracemark._util import rng

KINDS = ("content", "unrelated", "noise", "abstract")


def stamp(base: np.ndarray, drawing: np.ndarray, row: int, col: int, opacity: float) -> np.ndarray:
    """Blend the drawing (uint8 ink mask) onto every channel of ``base`` (float64, N×C×H×W) at (row, col)."""
    out = base.copy()
    size = drawing.shape[0]
    alpha = opacity * (drawing.astype(np.float64) / 255.0)
    window = out[:, :, row : row + size, col : col + size]
    out[:, :, row : row + size, col : col + size] = (1.0 - alpha) * window + alpha * 1.0
    return out


def content_triggers(base: np.ndarray, drawing: np.ndarray, params: dict) -> np.ndarray:
    """Source-class images with the secret drawing stamped on them."""
    return stamp(base, drawing, int(params["row"]), int(params["col"]), float(params["opacity"]))


def noise_triggers(base: np.ndarray, seed: bytes, params: dict) -> np.ndarray:
    """Source-class images plus Gaussian noise of standard deviation ``sigma``, clipped to [0, 1]."""
    noise = rng.normal(seed, "noise/pattern", base.size).reshape(base.shape)
    return np.clip(base + float(params["sigma"]) * noise, 0.0, 1.0)


def abstract_triggers(seed: bytes, n: int, shape: tuple[int, int, int], params: dict) -> np.ndarray:
    """Random blocky patterns: uniform values on a coarse grid, enlarged by ``block`` pixels."""
    c, h, w = shape
    block = int(params["block"])
    gh, gw = -(-h // block), -(-w // block)
    coarse = rng.uniform(seed, "abstract/pattern", n * c * gh * gw).reshape(n, c, gh, gw)
    fine = np.kron(coarse, np.ones((1, 1, block, block)))
    return fine[:, :, :h, :w]


def unrelated_pool_from_sample_photos(seed: bytes, n: int, shape: tuple[int, int, int]) -> np.ndarray:
    """``n`` random crops of scikit-learn's two bundled photos, grey (or RGB), resized to ``shape``.

    Used as out-of-domain images when the user gives none: it ships with a dependency, so no
    download is needed.
    """
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    c, h, w = shape
    u = rng.uniform(seed, "unrelated/crops", 4 * n).reshape(n, 4)
    out = np.empty((n, c, h, w), dtype=np.uint8)
    for i, (which, size_u, row_u, col_u) in enumerate(u):
        photo = photos[int(which * len(photos))]
        side = int(48 + size_u * (min(photo.shape[:2]) - 48))
        r = int(row_u * (photo.shape[0] - side))
        q = int(col_u * (photo.shape[1] - side))
        crop = Image.fromarray(photo[r : r + side, q : q + side])
        crop = crop.convert("L" if c == 1 else "RGB").resize((w, h), Image.Resampling.BOX)
        arr = np.asarray(crop, dtype=np.uint8)
        out[i] = arr[None] if c == 1 else arr.transpose(2, 0, 1)[:c]
    return out
