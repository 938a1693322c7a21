"""The lab's owner and thief: split the data, train and mark the owner's model (cached), build the thief's pools."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from tracemark.attacks.base import ThiefData
from tracemark.data.datasets import ImageData, load_dataset
from tracemark.data.models import build_model, load_model, save_model
from tracemark.errors import DatasetError
from tracemark.keys.key import WatermarkKey
from tracemark.keys.kinds import unrelated_pool_from_sample_photos
from tracemark.lab.errors import LabError
from tracemark.training import accuracy, fit, to_tensor_dataset

Method = Literal["posthoc", "mixing"]
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


def split_thief(data: ImageData, thief_size: int, ood: np.ndarray | None = None, seed: int = 0) -> tuple[ImageData, ThiefData]:
    """Give the thief the last ``thief_size`` labelled training images; the owner trains on the rest."""
    if not 0 < thief_size < len(data.x_train):
        raise LabError(f"thief_size must be between 1 and {len(data.x_train) - 1}")
    cut = len(data.x_train) - thief_size
    owner = ImageData(data.name, data.x_train[:cut], data.y_train[:cut], data.x_test, data.y_test, data.num_classes)
    return owner, ThiefData(data.x_train[cut:], data.y_train[cut:], ood, seed)


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


def marked_victim(owner: ImageData, config: MarkConfig, cache: str | Path | None = None,
                  show_progress: bool = False) -> tuple[nn.Module, WatermarkKey, dict]:
    """Train and mark the owner's model per ``config`` (loaded from ``cache`` when already made).

    Returns the marked model, its key, and facts about it (accuracies, unmarked baseline).
    """
    from tracemark.embedding.mixing import TriggerMixDataset
    from tracemark.embedding.posthoc import embed
    from tracemark.lab.augment import TransformedTriggers

    key = WatermarkKey.generate(config.kind, images=owner.x_train, labels=owner.y_train, n_triggers=config.n_triggers,
                                label_mode=config.label_mode, target_label=config.target_label,
                                seed=_key_seed(config, owner.name), name=f"lab-{config.name}")
    stem = f"{owner.name}-{config.name}-{key.commitment()[:12]}-n{len(owner.x_train)}"
    folder = Path(cache) if cache is not None else None
    if folder is not None and (folder / f"{stem}.safetensors").is_file():
        info = json.loads((folder / f"{stem}.json").read_text())
        return load_model(folder / f"{stem}.safetensors"), key, info
    train = to_tensor_dataset(owner.x_train, owner.y_train)
    clean = build_model(config.arch, owner.input_shape, owner.num_classes, seed=config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        fit(clean, train, epochs=config.epochs, seed=config.seed, show_progress=show_progress, description="training clean model")
    info: dict = {"config": config.to_dict(), "clean_accuracy": accuracy(clean, owner.x_test, owner.y_test)}
    if config.method == "posthoc":
        model = copy.deepcopy(clean)
        report = embed(model, key, owner, seed=config.seed, show_progress=show_progress)
        info["embed"] = report.to_dict()
    elif config.method == "mixing":
        model = build_model(config.arch, owner.input_shape, owner.num_classes, seed=config.seed)
        mixed = TriggerMixDataset(train, key, ratio=config.ratio, augment=config.augment)
        if config.transform_augment:
            mixed = TransformedTriggers(mixed, seed=config.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            for epoch in range(config.epochs):
                mixed.set_epoch(epoch)
                fit(model, mixed, epochs=1, seed=config.seed + epoch, show_progress=show_progress,
                    description=f"training with triggers (epoch {epoch + 1})")
    else:
        raise LabError(f"unknown marking method {config.method!r}")
    triggers = key.triggers()
    info["marked_accuracy"] = accuracy(model, owner.x_test, owner.y_test)
    info["trigger_accuracy"] = accuracy(model, triggers.inputs, triggers.labels)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        save_model(model, folder / f"{stem}.safetensors")
        (folder / f"{stem}.json").write_text(json.dumps(info, indent=2, default=str))
    return model, key, info
