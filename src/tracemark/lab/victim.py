"""The lab's owner and thief: split the data, train and mark the owner's model (cached), build the thief's pools."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from tracemark.attacks.base import ThiefData
from tracemark.data.batches import check_items, dataset_of, is_stream, item_pair
from tracemark.data.datasets import ImageData, load_dataset
from tracemark.data.models import build_model, load_model, save_model
from tracemark.errors import DatasetError
from tracemark.keys.key import WatermarkKey
from tracemark.keys.kinds import unrelated_pool_from_sample_photos
from tracemark.lab.errors import LabError
from tracemark.lab.protocol import held_out_accuracy
from tracemark.training import accuracy, fit, to_tensor_dataset

Method = Literal["posthoc", "mixing"]
Owner = Union[ImageData, Dataset, DataLoader]
OTHER_DOMAIN = {"mnist": "fashion-mnist", "fashion-mnist": "mnist"}


@dataclass(frozen=True)
class MarkConfig:
    """How the owner marks its model.

    ``posthoc`` trains a clean model for ``epochs`` then embeds with :func:`tracemark.embed`;
    ``mixing`` trains from scratch on :class:`TriggerMixDataset` (``ratio`` of triggers,
    ``augment`` for shifted triggers, ``transform_augment`` to also blur, resample, add noise to
    or reduce the bit depth of trigger items, see :mod:`tracemark.lab.augment`). ``label_mode="single"`` is the NXP/IBM one-class
    scheme (a learned backdoor; needs an empirical null), ``"keyed"`` per-trigger labels.
    """

    name: str = "baseline"
    kind: str = "content"
    n_triggers: int = 100
    label_mode: Literal["keyed", "single"] = "keyed"
    target_label: int | None = None
    method: Method = "posthoc"
    ratio: float = 0.05
    augment: bool = False
    transform_augment: bool = False
    arch: str = "small_cnn"
    epochs: int = 3
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


CONFIGS = {
    "baseline": MarkConfig(),
    "strong": MarkConfig(name="strong", n_triggers=300, label_mode="single", target_label=0, method="mixing",
                         ratio=0.05, augment=True),
    "strong-aug": MarkConfig(name="strong-aug", n_triggers=300, label_mode="single", target_label=0, method="mixing",
                             ratio=0.05, augment=True, transform_augment=True),
}


def split_thief(data: Owner, thief_size: int, ood: np.ndarray | Dataset | None = None, seed: int = 0, *,
                device: str | torch.device | None = None, num_workers: int = 0) -> tuple[ImageData | Dataset, ThiefData]:
    """Give the thief the last ``thief_size`` labelled training images; the owner trains on the rest.

    ``data`` is an :class:`ImageData` (the owner gets an ImageData with its test split) or a
    map-style ``Dataset``/``DataLoader`` of training items (the owner and the thief each get a
    ``Subset`` of it; nothing is read). ``device`` and ``num_workers`` go to the thief's attacks.
    """
    n = len(data.x_train) if isinstance(data, ImageData) else len(dataset_of(data))  # type: ignore[arg-type]
    if not 0 < thief_size < n:
        raise LabError(f"thief_size must be between 1 and {n - 1}")
    cut = n - thief_size
    if not isinstance(data, ImageData):
        pool = dataset_of(data)
        return Subset(pool, range(cut)), ThiefData(Subset(pool, range(cut, n)), None, ood, seed, device, num_workers)
    owner = ImageData(data.name, data.x_train[:cut], data.y_train[:cut], data.x_test, data.y_test, data.num_classes)
    return owner, ThiefData(data.x_train[cut:], data.y_train[cut:], ood, seed, device, num_workers)


def out_of_domain_pool(dataset: str, n: int, shape: tuple[int, int, int]) -> np.ndarray:
    """``n`` out-of-domain images: the other of MNIST / Fashion-MNIST, else crops of bundled photos."""
    other = OTHER_DOMAIN.get(dataset)
    if other is not None:
        try:
            x = load_dataset(other).x_train[:n]
            if tuple(x.shape[1:]) == tuple(shape):
                return x
        except DatasetError:
            pass
    return unrelated_pool_from_sample_photos(b"tracemark-lab-ood-pool", n, shape).astype(np.float32) / 255.0


def _key_seed(config: MarkConfig, dataset: str) -> bytes:
    return (f"tracemark-lab/{dataset}/{config.name}/{config.seed}".encode() * 2)[:32]


def marked_victim(owner: Owner, config: MarkConfig, cache: str | Path | None = None,
                  show_progress: bool = False, *, test: tuple[np.ndarray, np.ndarray] | Dataset | DataLoader | None = None,
                  num_classes: int | None = None, name: str | None = None, device: str | torch.device | None = None,
                  num_workers: int = 0) -> tuple[nn.Module, WatermarkKey, dict]:
    """Train and mark the owner's model per ``config`` (loaded from ``cache`` when already made).

    ``owner`` is an :class:`ImageData` (its test split measures accuracy) or a map-style
    ``Dataset``/``DataLoader`` of training items, which then needs ``test`` (arrays or a
    Dataset), ``num_classes`` and a ``name`` for the cache (default: the dataset's class
    name); the key's source images are a seeded sample of it. Training and embedding run
    on ``device`` (default: CUDA, else MPS, else CPU), reading with ``num_workers``.
    Returns the marked model, its key, and facts about it (accuracies, unmarked baseline).
    """
    from tracemark.embedding.mixing import TriggerMixDataset
    from tracemark.embedding.posthoc import embed
    from tracemark.lab.augment import TransformedTriggers

    if isinstance(owner, ImageData):
        train: Dataset = to_tensor_dataset(owner.x_train, owner.y_train)
        test = (owner.x_test, owner.y_test) if test is None else test
        label, k, shape, n = owner.name, owner.num_classes, owner.input_shape, len(owner.x_train)
        source = dict(images=owner.x_train, labels=owner.y_train)
    else:
        if test is None or num_classes is None:
            raise LabError("marking a model trained on a Dataset needs test= (the held-out items) and num_classes=")
        train = dataset_of(owner)
        check_items(train)
        shape = tuple(item_pair(train[0])[0].shape)
        if is_stream(test):
            check_items(test, shape)  # type: ignore[arg-type]
        label, k, n = name or type(train).__name__, int(num_classes), len(train)  # type: ignore[arg-type]
        source = dict(images=train, num_classes=k)
    key = WatermarkKey.generate(config.kind, n_triggers=config.n_triggers, label_mode=config.label_mode,
                                target_label=config.target_label, seed=_key_seed(config, label), name=f"lab-{config.name}",
                                **source)  # type: ignore[arg-type]
    stem = f"{label}-{config.name}-{key.commitment()[:12]}-n{n}"
    folder = Path(cache) if cache is not None else None
    if folder is not None and (folder / f"{stem}.safetensors").is_file():
        info = json.loads((folder / f"{stem}.json").read_text())
        return load_model(folder / f"{stem}.safetensors"), key, info
    clean = build_model(config.arch, shape, k, seed=config.seed)  # type: ignore[arg-type]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        fit(clean, train if isinstance(owner, ImageData) else owner, epochs=config.epochs, seed=config.seed,
            show_progress=show_progress, description="training clean model", device=device, num_workers=num_workers)
    info: dict = {"config": config.to_dict(), "clean_accuracy": held_out_accuracy(clean, test, device, num_workers)}
    if config.method == "posthoc":
        model = copy.deepcopy(clean)
        report = embed(model, key, owner, seed=config.seed, show_progress=show_progress, device=device,
                       num_workers=num_workers, validation=None if isinstance(owner, ImageData) else test)
        info["embed"] = report.to_dict()
    elif config.method == "mixing":
        model = build_model(config.arch, shape, k, seed=config.seed)  # type: ignore[arg-type]
        mixed = TriggerMixDataset(train, key, ratio=config.ratio, augment=config.augment)
        if config.transform_augment:
            mixed = TransformedTriggers(mixed, seed=config.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            for epoch in range(config.epochs):
                mixed.set_epoch(epoch)
                fit(model, mixed, epochs=1, seed=config.seed + epoch, show_progress=show_progress,
                    description=f"training with triggers (epoch {epoch + 1})", device=device, num_workers=num_workers)
    else:
        raise LabError(f"unknown marking method {config.method!r}")
    triggers = key.triggers()
    info["marked_accuracy"] = held_out_accuracy(model, test, device, num_workers)
    info["trigger_accuracy"] = accuracy(model, triggers.inputs, triggers.labels)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        save_model(model, folder / f"{stem}.safetensors")
        (folder / f"{stem}.json").write_text(json.dumps(info, indent=2, default=str))
    return model, key, info
