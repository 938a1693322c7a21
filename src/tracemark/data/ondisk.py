"""Datasets read from disk item by item, never loaded whole: image folders and memory-mapped arrays.

Both are map-style ``torch.utils.data.Dataset``s of ``(image, label)`` with images float32 C×H×W in
[0, 1], so every function that takes a Dataset (``fit``, ``embed``, ``assess``, ``WatermarkKey.generate``)
takes them. Each has ``classes``, ``num_classes``, ``input_shape`` and ``name``.

- :class:`ImageFolder`: ``root/<class>/<image>.png|.jpg|.jpeg``; class names sorted give the labels.
  Each image is decoded with Pillow when asked for (header checked against
  :class:`~tracemark.trust.requests.ImageBounds` first), converted to L or RGB and resized.
- :class:`MemmapImages`: a folder with ``images.npy`` (N×C×H×W, uint8 or float32) and ``labels.npy``
  (N integers), opened with ``np.load(mmap_mode="r", allow_pickle=False)``. :func:`write_memmap` writes one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch.utils.data import Dataset

from tracemark.errors import DatasetError, DatasetItemError
from tracemark.trust.requests import ImageBounds, open_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGES_FILE, LABELS_FILE = "images.npy", "labels.npy"
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _check_shape(input_shape: Iterable[int], source: str) -> tuple[int, int, int]:
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or shape[0] not in (1, 3) or min(shape) < 1:
        raise DatasetError(f"{source}: input_shape must be (C, H, W) with C 1 (grey) or 3 (RGB), not {shape}")
    return shape  # type: ignore[return-value]


class ImageFolder(Dataset):
    """Class-per-subfolder PNG/JPEG images, decoded on access as float32 C×H×W in [0, 1].

    ``input_shape`` (C, H, W): C=1 converts to grey, C=3 to RGB, and every image is resized to H×W
    (bilinear). Without it, the first image decides: grey stays 1 channel, anything else 3, at its own size.
    ``bounds`` caps the pixels of one image (read from its header, before decoding) and the formats
    Pillow may use. A file that cannot be read raises :class:`~tracemark.errors.DatasetItemError` naming it.
    """

    def __init__(self, root: str | os.PathLike[str], input_shape: Iterable[int] | None = None, *,
                 bounds: ImageBounds = ImageBounds()):
        self.root = Path(root)
        self.bounds = bounds
        self.name = self.root.name
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: no such folder; an image folder holds one subfolder of images per class")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.classes:
            raise DatasetError(f"{self.root}: no class subfolders; put each class's images in a subfolder named after "
                               "the class (root/cat/1.png, root/dog/2.jpg)")
        self.samples: list[tuple[str, int]] = []
        for label, name in enumerate(self.classes):
            files = sorted(e.name for e in os.scandir(self.root / name) if e.is_file()
                           and e.name.lower().endswith(IMAGE_SUFFIXES) and not e.name.startswith("."))
            if not files:
                raise DatasetError(f"{self.root / name}: class folder without PNG or JPEG images; "
                                   "remove it or add its images")
            self.samples += [(str(self.root / name / f), label) for f in files]
        if input_shape is None:
            input_shape = self._first_shape()
        self.input_shape = _check_shape(input_shape, str(self.root))

    @property
    def num_classes(self) -> int:
        """How many classes (subfolders) there are."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def _open(self, path: str):
        """The image at ``path`` opened (header only) and checked against the bounds."""
        return open_image(path, path, self.bounds, unreadable=DatasetItemError, too_large=DatasetItemError,
                          hint="shrink it (or raise ImageBounds.max_pixels)")

    def _first_shape(self) -> tuple[int, int, int]:
        img = self._open(self.samples[0][0])
        with img:
            return (1 if img.mode in GREY_MODES else 3, img.height, img.width)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[index]
        channels, height, width = self.input_shape
        mode = "L" if channels == 1 else "RGB"
        img = self._open(path)
        try:
            img.draft(mode, (width, height))  # JPEG: decode at the smallest scale still at least H×W
            converted = img.convert(mode)
            if converted.size != (width, height):
                converted = converted.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(converted, dtype=np.float32) / np.float32(255.0)
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise DatasetItemError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc
        finally:
            img.close()
        pixels = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(pixels)), label

    def __repr__(self) -> str:
        return f"ImageFolder({str(self.root)!r}, {len(self)} images, {self.num_classes} classes, {self.input_shape})"


class MemmapImages(Dataset):
    """``images.npy`` (N×C×H×W, uint8 or float32) and ``labels.npy`` (N ints) in ``directory``, memory-mapped.

    Items are float32 C×H×W in [0, 1] (uint8 pixels divided by 255); nothing is read before it is asked for,
    except the labels once, to count the classes (``num_classes``, unless given).
    """

    def __init__(self, directory: str | os.PathLike[str], num_classes: int | None = None):
        self.directory = Path(directory)
        self.name = self.directory.name
        images, labels = self.directory / IMAGES_FILE, self.directory / LABELS_FILE
        for path in (images, labels):
            if not path.is_file():
                raise DatasetError(f"{self.directory}: no {path.name}; a memmap folder holds {IMAGES_FILE} (N×C×H×W "
                                   f"uint8 or float32) and {LABELS_FILE} (N integers)")
        self.images = self._open(images)
        self.labels = self._open(labels)
        if self.images.ndim != 4 or self.images.dtype not in (np.uint8, np.float32):
            raise DatasetError(f"{images}: {self.images.dtype} array of shape {self.images.shape}; "
                               "need N×C×H×W uint8 or float32")
        if self.labels.ndim != 1 or not np.issubdtype(self.labels.dtype, np.integer):
            raise DatasetError(f"{labels}: {self.labels.dtype} array of shape {self.labels.shape}; need N integers")
        if len(self.images) != len(self.labels):
            raise DatasetError(f"{self.directory}: {len(self.images)} images but {len(self.labels)} labels; "
                               "give one label per image")
        self.input_shape = _check_shape(self.images.shape[1:], str(images))
        if num_classes is None:
            num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0
            if len(self.labels) and int(self.labels.min()) < 0:
                raise DatasetError(f"{labels}: negative labels; classes are 0 to K-1")
        self.num_classes = int(num_classes)
        self.classes = [str(i) for i in range(self.num_classes)]
        self._scale = np.float32(255.0) if self.images.dtype == np.uint8 else np.float32(1.0)

    @staticmethod
    def _open(path: Path) -> np.ndarray:
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{path}: not a readable .npy array ({exc})") from exc

    def __getstate__(self) -> dict:
        """Pickled (for spawned DataLoader workers) as the folder's path, never as the mapped arrays."""
        return {"directory": str(self.directory), "num_classes": self.num_classes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["directory"], state["num_classes"])  # type: ignore[misc]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = np.asarray(self.images[index], dtype=np.float32) / self._scale
        return torch.from_numpy(x), int(self.labels[index])

    def __repr__(self) -> str:
        return f"MemmapImages({str(self.directory)!r}, {len(self)} images, {self.num_classes} classes, {self.input_shape})"


def write_memmap(directory: str | os.PathLike[str], images: np.ndarray | Iterable[np.ndarray],
                 labels: np.ndarray, *, shape: tuple[int, ...] | None = None, dtype: np.dtype | type | None = None) -> Path:
    """Write a :class:`MemmapImages` folder atomically (a temp folder beside it, then a rename); return its path.

    ``images`` is an N×C×H×W uint8/float32 array, or an iterable of chunks (each n×C×H×W) with the total
    ``shape`` and ``dtype`` given, so a large set is written without holding it in memory. An existing
    folder at ``directory`` is replaced.
    """
    target = Path(directory)
    labels = np.asarray(labels)
    if isinstance(images, np.ndarray):
        shape, dtype, chunks = images.shape, images.dtype, [images]
    elif shape is None or dtype is None:
        raise ValueError("write_memmap: give shape= and dtype= with an iterable of image chunks")
    else:
        chunks = images  # type: ignore[assignment]
    if np.dtype(dtype) not in (np.uint8, np.float32) or len(shape) != 4:
        raise DatasetError(f"write_memmap: images must be N×C×H×W uint8 or float32, not {np.dtype(dtype)} {tuple(shape)}")
    if labels.shape != (shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"write_memmap: {shape[0]} images need {shape[0]} integer labels, not {labels.dtype} {labels.shape}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        out = np.lib.format.open_memmap(tmp / IMAGES_FILE, mode="w+", dtype=dtype, shape=tuple(shape))
        at = 0
        for chunk in chunks:
            out[at : at + len(chunk)] = chunk
            at += len(chunk)
        if at != shape[0]:
            raise DatasetError(f"write_memmap: the chunks hold {at} images, shape says {shape[0]}")
        out.flush()
        del out
        np.save(tmp / LABELS_FILE, labels.astype(np.int64), allow_pickle=False)
        for name in (IMAGES_FILE, LABELS_FILE):
            with open(tmp / name, "rb+") as handle:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o755)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def open_folder(path: str | os.PathLike[str], input_shape: Iterable[int] | None = None) -> ImageFolder | MemmapImages:
    """A memmap folder (it holds ``images.npy``) as :class:`MemmapImages`, any other folder as :class:`ImageFolder`."""
    path = Path(path)
    if (path / IMAGES_FILE).is_file() or (path / LABELS_FILE).is_file():
        return MemmapImages(path)
    return ImageFolder(path, input_shape)


__all__ = ["IMAGE_SUFFIXES", "ImageFolder", "MemmapImages", "open_folder", "write_memmap"]
