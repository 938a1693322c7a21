"""Image-classification datasets as float32 arrays in [0, 1], shaped (N, C, H, W).

Every model and key in tracemark works in that space; a model that wants normalised
inputs normalises inside its own ``forward``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tracemark.errors import DatasetError

DATA_DIR_ENV = "TRACEMARK_DATA_DIR"


@dataclass(frozen=True)
class ImageData:
    """A train/test split of images (float32, [0, 1], N×C×H×W) and integer labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one image, (C, H, W)."""
        return tuple(int(d) for d in self.x_train.shape[1:])  # type: ignore[return-value]

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> "ImageData":
        """The first ``n_train`` training and ``n_test`` test items (the order is already shuffled)."""
        return ImageData(
            self.name,
            self.x_train[:n_train],
            self.y_train[:n_train],
            self.x_test[:n_test],
            self.y_test[:n_test],
            self.num_classes,
        )

    def __str__(self) -> str:
        return (
            f"{self.name}: {len(self.x_train)} train / {len(self.x_test)} test images of shape "
            f"{self.input_shape}, {self.num_classes} classes"
        )


def _as_images(x: np.ndarray, scale: float) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32) / np.float32(scale)
    if x.ndim == 3:
        x = x[:, None, :, :]
    return np.ascontiguousarray(x)


def shared_data_dir() -> Path:
    """Where full MNIST / Fashion-MNIST ``.npz`` files are looked for.

    ``$TRACEMARK_DATA_DIR`` if set, else ``shared/data`` beside the repository checkout.
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return Path.cwd() / "shared" / "data"


def _load_digits(seed: int) -> ImageData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = _as_images(bunch.images, 16.0)
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_test = 360
    return ImageData("digits", x[n_test:], y[n_test:], x[:n_test], y[:n_test], 10)


def _load_npz(path: Path, name: str) -> ImageData:
    if not path.is_file():
        raise DatasetError(
            f"{name}: no file at {path}. Put {path.name} there, or set ${DATA_DIR_ENV} to the folder that holds it "
            "(default: shared/data beside the checkout)."
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as exc:
        raise DatasetError(f"{path}: missing array {exc}; need x_train, y_train, x_test, y_test") from exc
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable .npz archive ({exc})") from exc
    scale = 255.0 if arrays["x_train"].dtype == np.uint8 else 1.0
    y_train = arrays["y_train"].astype(np.int64)
    y_test = arrays["y_test"].astype(np.int64)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return ImageData(
        name,
        _as_images(arrays["x_train"], scale),
        y_train,
        _as_images(arrays["x_test"], scale),
        y_test,
        num_classes,
    )


def load_dataset(name: str = "digits", seed: int = 0) -> ImageData:
    """Load a dataset by name or ``.npz`` path.

    Names: ``digits`` (scikit-learn's bundled 8×8 digits, always available), ``mnist`` and
    ``fashion-mnist`` (``mnist.npz`` / ``fashion_mnist.npz`` in :func:`shared_data_dir`:
    ``$TRACEMARK_DATA_DIR``, else ``shared/data`` beside the checkout), or a path to an ``.npz``
    with ``x_train, y_train, x_test, y_test``.
    """
    key = name.lower().replace("_", "-")
    if key == "digits":
        return _load_digits(seed)
    if key in ("mnist", "fashion-mnist"):
        filename = "mnist.npz" if key == "mnist" else "fashion_mnist.npz"
        return _load_npz(shared_data_dir() / filename, key)
    path = Path(name)
    if path.suffix == ".npz":
        return _load_npz(path, path.stem)
    raise DatasetError(f"unknown dataset {name!r}: use digits, mnist, fashion-mnist or a path to an .npz file")
