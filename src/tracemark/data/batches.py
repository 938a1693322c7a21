"""Adapting arrays, ``Dataset``s and ``DataLoader``s to one iterator of ``(x, y)`` batches.

A ``DataLoader`` is used as given; a ``Dataset`` is wrapped in one (``batch_size``,
``num_workers``). Items must be ``(image, label)``: a floating-point C×H×W image and an
integer label. :func:`check_items` looks at the first item before any work starts.
"""

from __future__ import annotations

from typing import Iterator, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from tracemark.errors import DatasetItemError, ShapeMismatchError

Stream = Union[Dataset, DataLoader]


def is_stream(data: object) -> bool:
    """Whether ``data`` is a torch ``Dataset`` or ``DataLoader`` (rather than arrays or ``ImageData``)."""
    return isinstance(data, (Dataset, DataLoader))


def dataset_of(data: Stream) -> Dataset:
    """The dataset behind ``data`` (itself, or a loader's ``dataset``)."""
    return data.dataset if isinstance(data, DataLoader) else data


def as_loader(data: Stream, *, batch_size: int, num_workers: int = 0, shuffle: bool = False,
              generator: torch.Generator | None = None) -> DataLoader:
    """``data`` itself when it is a ``DataLoader``, else a ``DataLoader`` over the dataset."""
    if isinstance(data, DataLoader):
        return data
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=num_workers)


def batches(data: Stream, *, batch_size: int, num_workers: int = 0, device: torch.device | None = None
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield the ``(x, y)`` batches of ``data`` in order, moved to ``device`` when given."""
    for xb, yb in as_loader(data, batch_size=batch_size, num_workers=num_workers):
        yield (xb, yb) if device is None else (xb.to(device), yb.to(device))


def item_pair(item: object) -> tuple[torch.Tensor, torch.Tensor]:
    """One dataset item as a float32 image tensor and an int64 label tensor."""
    x, y = item  # type: ignore[misc]
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)


def check_items(data: Stream, input_shape: tuple[int, ...] | None = None) -> None:
    """Raise unless the first item of ``data`` is a floating image (of ``input_shape``, if given) and an integer label.

    Loaders with their own ``collate_fn`` are not checked: their items need not be tensors yet.
    """
    if isinstance(data, DataLoader) and data.collate_fn is not default_collate:
        return
    dataset = dataset_of(data)
    name = type(dataset).__name__
    try:
        item = next(iter(dataset)) if isinstance(dataset, IterableDataset) else dataset[0]
    except (IndexError, StopIteration) as exc:
        raise DatasetItemError(f"dataset {name} is empty; give it at least one (image, label) item") from exc
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise DatasetItemError(f"dataset {name} yields {type(item).__name__} items; make each item an (image, label) pair")
    x, y = (torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v for v in item)
    if not torch.is_floating_point(x):
        raise DatasetItemError(f"dataset {name} yields {x.dtype} images; convert them to float32 in [0, 1]")
    if y.numel() != 1 or torch.is_floating_point(y) or y.dtype == torch.bool or torch.is_complex(y):
        raise DatasetItemError(f"dataset {name} yields labels of dtype {y.dtype} and shape {tuple(y.shape)}; "
                               "give one integer class per item")
    if input_shape is not None and tuple(x.shape) != tuple(input_shape):
        raise ShapeMismatchError(f"dataset {name} yields images of shape {tuple(x.shape)}, the key's triggers are "
                                 f"{tuple(input_shape)}; resize the images (C×H×W) or use a key of that shape")


def sample_arrays(dataset: Dataset, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The items of a map-style ``dataset`` at ``indices`` as float32 images (N×C×H×W) and int64 labels; only those
    items are read."""
    if isinstance(dataset, IterableDataset):
        raise DatasetItemError(f"dataset {type(dataset).__name__} is iterable-only; a sample needs a map-style Dataset")
    check_items(dataset)
    pairs = [item_pair(dataset[int(i)]) for i in indices]
    if not pairs:
        raise DatasetItemError(f"dataset {type(dataset).__name__} is empty; give it at least one (image, label) item")
    shapes = {tuple(x.shape) for x, _ in pairs}
    if len(shapes) != 1:
        raise ShapeMismatchError(f"dataset {type(dataset).__name__} yields images of several shapes {sorted(shapes)[:3]}; make them one C×H×W")
    return torch.stack([x for x, _ in pairs]).numpy(), torch.stack([y.reshape(()) for _, y in pairs]).numpy()

