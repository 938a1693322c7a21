"""What every removal attack shares: the thief's resources, the attack interface, the stolen result.

An attack takes the victim (a torch module when the thief holds the weights, or any
:class:`~tracemark.targets.Target` when it only has an API) and the thief's own data, and
returns what the thief ends up with: a torch module, or a Target for attacks that act at query
time. Attacks never see the watermark key.
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from tracemark.data.batches import check_items, dataset_of, is_stream, item_pair, sample_arrays
from tracemark.errors import DatasetItemError, ShapeMismatchError, TracemarkError
from tracemark.targets.base import Target
from tracemark.targets.local import TorchTarget
from tracemark.training import to_tensor_dataset

Access = Literal["weights", "api"]
KINDS = ("finetune", "prune", "quantize", "noise", "distill", "extract", "transform")


class AttackError(TracemarkError):
    """An attack cannot run with what it was given (no weights, no labels, no query pool)."""


Images = Union[np.ndarray, Dataset]


def _as_dataset(data: Images | DataLoader | None, what: str) -> Images | None:
    """Arrays as they are; a ``DataLoader``'s dataset; a map-style Dataset checked (its first item) before any work."""
    if not is_stream(data):
        return data  # type: ignore[return-value]
    dataset = dataset_of(data)  # type: ignore[arg-type]
    if isinstance(dataset, IterableDataset):
        raise DatasetItemError(f"ThiefData.{what}: attacks take items by index; give a map-style Dataset (with "
                               "__getitem__ and __len__), not an IterableDataset")
    check_items(dataset)
    return dataset


@dataclass(frozen=True)
class ThiefData:
    """The thief's own resources.

    ``x`` are in-domain images: an array (float32 N×C×H×W in [0, 1]) with ``y`` their labels
    when the thief has them (fine-tuning needs them, extraction does not), or a map-style
    ``Dataset`` (or ``DataLoader``, for its dataset) of ``(image, label)`` items, which carries
    its own labels and is read in batches, never whole. ``ood_x`` are out-of-domain images
    (an array, or a Dataset whose labels are ignored) for extraction with an out-of-domain
    query pool. ``seed`` makes every attack that draws randomness reproducible; the attacks
    that train do so on ``device`` (default: CUDA, else MPS, else CPU), reading a Dataset with
    ``num_workers`` worker processes. The same arrays given as arrays or as a
    ``TensorDataset`` give the same stolen models.
    """

    x: Images
    y: np.ndarray | None = None
    ood_x: Images | None = None
    seed: int = 0
    device: str | torch.device | None = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        if is_stream(self.x) and self.y is not None:
            raise AttackError("ThiefData: a Dataset carries its own labels; do not pass y with it")
        object.__setattr__(self, "x", _as_dataset(self.x, "x"))
        object.__setattr__(self, "ood_x", _as_dataset(self.ood_x, "ood_x"))

    @property
    def has_labels(self) -> bool:
        """Whether the thief's in-domain images come with labels (a Dataset always does)."""
        return self.y is not None or is_stream(self.x)

    def _first(self, data: Images, n: int | None) -> Images:
        if not is_stream(data):
            return data[:n]  # type: ignore[index]
        size = len(data)  # type: ignore[arg-type]
        return data if n is None or n >= size else Subset(data, range(n))  # type: ignore[arg-type]

    def labelled_set(self, n: int | None = None) -> Dataset:
        """The first ``n`` labelled images as a Dataset (read lazily for a Dataset); raises :class:`AttackError`
        if the thief has no labels."""
        if not self.has_labels:
            raise AttackError("this attack needs the thief's labelled data (ThiefData.y)")
        if is_stream(self.x):
            return self._first(self.x, n)  # type: ignore[return-value]
        assert self.y is not None
        return to_tensor_dataset(self.x[:n], self.y[:n])  # type: ignore[index]

    def labelled(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` labelled images as arrays (read into memory for a Dataset); raises :class:`AttackError`
        if the thief has no labels."""
        if is_stream(self.x):
            return _arrays(self.labelled_set(n))
        if self.y is None:
            raise AttackError("this attack needs the thief's labelled data (ThiefData.y)")
        return self.x[:n], self.y[:n]  # type: ignore[index]

    def pool_set(self, which: str, n: int | None = None) -> Images:
        """The first ``n`` images of the in-domain (``"in"``) or out-of-domain (``"ood"``) pool: an array slice,
        or a Dataset of them (not read)."""
        if which == "in":
            return self._first(self.x, n)
        if which == "ood":
            if self.ood_x is None:
                raise AttackError("no out-of-domain pool: give ThiefData.ood_x")
            return self._first(self.ood_x, n)
        raise AttackError(f"unknown query pool {which!r}: use 'in' or 'ood'")

    def pool(self, which: str, n: int | None = None) -> np.ndarray:
        """The first ``n`` images of the in-domain (``"in"``) or out-of-domain (``"ood"``) pool as an array
        (read into memory for a Dataset)."""
        chosen = self.pool_set(which, n)
        return _arrays(chosen)[0] if is_stream(chosen) else chosen  # type: ignore[return-value]

    def size(self, which: str = "in") -> int:
        """How many images the in-domain (``"in"``) or out-of-domain (``"ood"``) pool holds (0 without one)."""
        data = self.x if which == "in" else self.ood_x
        return 0 if data is None else len(data)  # type: ignore[arg-type]


def _arrays(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    return sample_arrays(dataset, np.arange(len(dataset)))  # type: ignore[arg-type]


def image_shape(pool: Images) -> tuple[int, ...]:
    """The C×H×W shape of the pool's images (for a Dataset: of its first item)."""
    if is_stream(pool):
        return tuple(item_pair(pool[0])[0].shape)  # type: ignore[index]
    return tuple(int(d) for d in pool.shape[1:])  # type: ignore[union-attr]


def check_pool_shape(pool: Images, target: Target, what: str) -> None:
    """Refuse a pool whose images are not the target's input shape (when the target states one), before querying."""
    if target.input_shape is not None and len(pool) and image_shape(pool) != tuple(target.input_shape):  # type: ignore[arg-type]
        raise ShapeMismatchError(f"the thief's {what} images have shape {image_shape(pool)}; {target} takes "
                                 f"{tuple(target.input_shape)}")


@dataclass
class Stolen:
    """What an attack leaves the thief with: a Target to query, and the module behind it if any."""

    target: Target
    model: nn.Module | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Attack(abc.ABC):
    """A removal attack with declared parameters.

    Subclasses set ``kind`` (one of :data:`KINDS`) and ``access`` (``"weights"`` if the thief
    needs the model's parameters, ``"api"`` if answers suffice), expose their parameters via
    :meth:`params` and a single number :attr:`strength` for plots, and implement :meth:`run`.
    """

    kind: ClassVar[str]
    access: ClassVar[Access] = "weights"

    @property
    @abc.abstractmethod
    def strength(self) -> float:
        """One number that grows with the attack's strength (a rate, a sigma, a budget)."""

    @abc.abstractmethod
    def params(self) -> dict[str, Any]:
        """The attack's parameters, JSON-able."""

    @abc.abstractmethod
    def run(self, victim: nn.Module | Target, thief: ThiefData) -> Stolen:
        """Attack ``victim`` with the thief's resources; never modifies ``victim``."""

    @property
    def name(self) -> str:
        """A short label such as ``prune-magnitude(rate=0.5)``."""
        inner = ",".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.label}({inner})"

    @property
    def label(self) -> str:
        """The attack's family-specific name without parameters."""
        return self.kind

    def __str__(self) -> str:
        return self.name


def require_module(victim: nn.Module | Target, attack: Attack) -> nn.Module:
    """The victim's weights as a private deep copy; raises if the thief only has an API."""
    if isinstance(victim, TorchTarget) and isinstance(victim.module, nn.Module):
        victim = victim.module
    if not isinstance(victim, nn.Module):
        raise AttackError(f"{attack.name} needs the model's weights, but the victim is only an API ({victim})")
    clone = copy.deepcopy(victim)
    clone.eval()
    return clone


def as_target(victim: nn.Module | Target) -> Target:
    """Wrap a module as a Target; pass Targets through."""
    return victim if isinstance(victim, Target) else TorchTarget(victim, description="victim model")


def stolen_module(model: nn.Module, description: str, **info: Any) -> Stolen:
    """A :class:`Stolen` around a torch module."""
    model.eval()
    return Stolen(TorchTarget(model, description=description), model, dict(info))


def prunable_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The weight tensors of every Conv and Linear layer (biases excluded), in module order."""
    return [
        (f"{name}.weight", module.weight)
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
    ]


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU torch generator at ``seed``."""
    return torch.Generator().manual_seed(int(seed))
