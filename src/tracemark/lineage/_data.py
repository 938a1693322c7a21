"""The owner's data as the lineage code needs it: a training Dataset, start images, and a digest of both."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset

from tracemark._util import rng
from tracemark.data.batches import check_items, item_pair, sample_arrays
from tracemark.data.datasets import ImageData
from tracemark.errors import DatasetItemError
from tracemark.training import to_tensor_dataset

DIGEST_ITEMS = 256
"""How many items of a Dataset (seeded positions, plus its length) its digest reads; an ImageData is hashed whole."""


@dataclass(frozen=True)
class OwnerData:
    """``train``: what pool members train on; ``starts``: where generation draws its start images from
    (an ImageData's test split, else the training Dataset itself); ``digest``: names the data in cache keys."""

    train: Dataset
    starts: Dataset
    digest: str
    input_shape: tuple[int, int, int]


def _dataset_digest(dataset: Dataset) -> str:
    digest = hashlib.sha256(f"dataset:{len(dataset)}".encode())  # type: ignore[arg-type]
    positions = rng.integers(b"tracemark-lineage-data", "digest positions", DIGEST_ITEMS, len(dataset))  # type: ignore[arg-type]
    for index in positions:
        x, y = item_pair(dataset[int(index)])
        digest.update(x.numpy().astype("<f4").tobytes() + y.numpy().astype("<i8").tobytes())
    return digest.hexdigest()


def owner_data(data: ImageData | Dataset) -> OwnerData:
    """Adapt ``data`` (an :class:`ImageData`, or a map-style Dataset of ``(image, label)`` items)."""
    if isinstance(data, ImageData):
        digest = hashlib.sha256()
        for array in (data.x_train, data.y_train, data.x_test, data.y_test):
            digest.update(np.ascontiguousarray(array).tobytes())
        train = to_tensor_dataset(data.x_train, data.y_train)
        starts = to_tensor_dataset(data.x_test, data.y_test) if len(data.x_test) else train
        return OwnerData(train, starts, digest.hexdigest(), data.input_shape)
    if isinstance(data, IterableDataset) or not isinstance(data, Dataset):
        raise DatasetItemError(f"lineage needs ImageData or a map-style Dataset (with __getitem__ and __len__), "
                               f"not {type(data).__name__}")
    check_items(data)
    shape = tuple(int(d) for d in item_pair(data[0])[0].shape)
    if len(shape) != 3:
        raise DatasetItemError(f"dataset {type(data).__name__} yields images of shape {shape}; give C×H×W images")
    return OwnerData(data, data, _dataset_digest(data), shape)  # type: ignore[arg-type]


PARTS = ("all", "a", "b")
"""Which part of the owner's data a pool member draws from: all of it, or one of two fixed disjoint halves."""


def split_indices(n: int, fraction: float, seed: int, part: str = "all") -> np.ndarray:
    """A seeded subset of ``range(n)`` (or of its half ``part``: ``a`` and ``b`` split it by one fixed seeded
    permutation, the same for every member) holding ``round(fraction · size)`` items, sorted (platform-independent)."""
    pool = np.arange(n)
    if part != "all":
        halves = rng.permutation(b"tracemark-lineage-halves", "halves", n)
        pool = np.sort(halves[: n // 2] if part == "a" else halves[n // 2 :])
    order = rng.permutation(f"tracemark-lineage-split-{seed}".encode(), "split", len(pool))
    return np.sort(pool[order[: max(1, int(round(fraction * len(pool))))]])


def indices_digest(indices: np.ndarray) -> str:
    """Hex SHA-256 of the indices as little-endian int64."""
    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()


def start_arrays(starts: Dataset, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` seeded start images (float32 N×C×H×W) and their labels from ``starts`` (all of them if it holds fewer)."""
    size = len(starts)  # type: ignore[arg-type]
    chosen = rng.permutation(f"tracemark-lineage-starts-{seed}".encode(), "starts", size)[: min(n, size)]
    return sample_arrays(starts, np.sort(chosen))


def class_count(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """How many classes ``model`` scores (its output width on one zero image)."""
    from tracemark.data.devices import model_device

    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros((1, *input_shape), device=model_device(model)))
    model.train(was_training)
    return int(out.shape[1])
