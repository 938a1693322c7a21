"""Null profiles: how often independently trained models give a key's watermark labels.

A profile is built once per task from N models trained without any key (different seeds,
architectures and training subsets), stores each model's match count per key, and records
exactly how the models were made. It is saved as JSON; the models themselves are cached as
safetensors files beside it so more keys can be profiled later.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from tracemark._util.files import atomic_write_text
from tracemark.data.batches import check_items, dataset_of, is_stream, item_pair
from tracemark.data.datasets import ImageData
from tracemark.data.devices import resolve_device
from tracemark.data.models import build_model, load_model, save_model
from tracemark.executor import Executor, on_device
from tracemark.keys.key import WatermarkKey
from tracemark.lab.errors import NullProfileError
from tracemark.lab.protocol import held_out_accuracy
from tracemark.targets.base import Target
from tracemark.targets.local import TorchTarget
from tracemark.training import fit, to_tensor_dataset
from tracemark.verification.null import EMPIRICAL_CONFIDENCE, NullModel, choose_null
from tracemark.verification.stats import binomial_pvalue, clopper_pearson_upper

PROFILE_FORMAT = "tracemark-null-profile/1"

DEFAULT_ARCHS = ("small_cnn", "lenet", "mlp")


@dataclass(frozen=True)
class ReferenceModel:
    """How one independent reference model was made, and where it is cached."""

    arch: str
    seed: int
    epochs: int
    train_size: int
    lr: float
    test_accuracy: float
    file: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class FalsePositiveCheck:
    """Each reference model verified against a key with a leave-one-out null: none should be ``copy``."""

    key_commitment: str
    alpha: float
    matches: list[int]
    queries: int
    p_values: list[float]
    nulls: list[float]

    @property
    def called_copy(self) -> int:
        """How many independent models were (falsely) called copies."""
        return sum(p <= self.alpha for p in self.p_values)

    def to_dict(self) -> dict:
        return {**asdict(self), "called_copy": self.called_copy, "n_models": len(self.matches)}

    def __str__(self) -> str:
        return (f"{len(self.matches)} independent models, {self.called_copy} called copy at alpha {self.alpha:.0e}; "
                f"matches {min(self.matches)}-{max(self.matches)} of {self.queries}, "
                f"smallest p-value {min(self.p_values):.3g}")


@dataclass
class NullProfile:
    """Match counts of independent models per key, and the recipe of those models."""

    dataset: str
    references: list[ReferenceModel]
    matches: dict[str, list[int]] = field(default_factory=dict)
    queries: dict[str, int] = field(default_factory=dict)
    created_at: str = ""
    recipe: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ per key
    def add_key(self, key: WatermarkKey, models: Sequence[nn.Module | Target]) -> None:
        """Query every reference with ``key``'s triggers and store their match counts."""
        if len(models) != len(self.references):
            raise NullProfileError(f"the profile has {len(self.references)} references, got {len(models)} models")
        triggers = key.triggers()
        counts = []
        for model in models:
            target = model if isinstance(model, Target) else TorchTarget(model)
            counts.append(int(np.sum(target.predict_labels(triggers.inputs) == triggers.labels)))
        self.matches[key.commitment()] = counts
        self.queries[key.commitment()] = len(triggers)

    def covers(self, key: WatermarkKey) -> bool:
        """Whether the profile holds match counts for ``key``."""
        return key.commitment() in self.matches

    def _counts(self, key: WatermarkKey) -> tuple[list[int], int]:
        if not self.covers(key):
            raise NullProfileError(f"the null profile has no counts for key {key.commitment()[:16]}…; run add_key first")
        return self.matches[key.commitment()], self.queries[key.commitment()]

    def null_for(self, key: WatermarkKey, confidence: float = EMPIRICAL_CONFIDENCE, exclude: int | None = None) -> NullModel:
        """The empirical null for ``key``: Clopper-Pearson upper bound of the pooled match rate."""
        counts, n = self._counts(key)
        used = [c for i, c in enumerate(counts) if i != exclude]
        pooled, trials = sum(used), n * len(used)
        return NullModel("empirical", clopper_pearson_upper(pooled, trials, confidence), {
            "n_models": len(used), "matches_per_model": used, "queries_per_model": n,
            "pooled_rate": pooled / trials if trials else None, "confidence": confidence,
            "profile": {"dataset": self.dataset, "created_at": self.created_at},
        })

    def false_positives(self, key: WatermarkKey, alpha: float = 1e-9) -> FalsePositiveCheck:
        """Verify each reference against ``key`` with the null of the *other* references (leave-one-out)."""
        counts, n = self._counts(key)
        nulls = [choose_null(key, self.null_for(key, exclude=i)).rate for i in range(len(counts))]
        p_values = [binomial_pvalue(c, n, r) for c, r in zip(counts, nulls)]
        return FalsePositiveCheck(key.commitment(), alpha, counts, n, p_values, nulls)

    # ------------------------------------------------------------------ models
    def load_references(self, folder: str | Path) -> list[nn.Module]:
        """Load the cached reference models (``folder`` is where the profile's files are); checks hashes."""
        models = []
        for ref in self.references:
            if ref.file is None:
                raise NullProfileError(f"reference {ref.arch} seed {ref.seed} was not saved; rebuild the profile")
            path = Path(folder) / ref.file
            if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != ref.sha256:
                raise NullProfileError(f"{path}: missing or changed since the profile was made")
            models.append(load_model(path))
        return models

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        return {
            "format": PROFILE_FORMAT,
            "dataset": self.dataset,
            "created_at": self.created_at,
            "recipe": self.recipe,
            "references": [asdict(r) for r in self.references],
            "keys": {c: {"matches": m, "queries": self.queries[c]} for c, m in self.matches.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> "NullProfile":
        if data.get("format") != PROFILE_FORMAT:
            raise NullProfileError(f"not a null profile (format {data.get('format')!r}, expected {PROFILE_FORMAT!r})")
        try:
            refs = [ReferenceModel(**r) for r in data["references"]]
            keys = data["keys"]
            return cls(str(data["dataset"]), refs, {c: [int(x) for x in v["matches"]] for c, v in keys.items()},
                       {c: int(v["queries"]) for c, v in keys.items()}, str(data.get("created_at", "")), dict(data.get("recipe", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise NullProfileError(f"malformed null profile ({exc.__class__.__name__}: {exc})") from exc

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "NullProfile":
        """Read a profile written by :meth:`save`."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise NullProfileError(f"{path}: cannot read null profile ({exc})") from exc

    def __str__(self) -> str:
        archs = sorted({r.arch for r in self.references})
        accs = [r.test_accuracy for r in self.references]
        return (f"null profile on {self.dataset}: {len(self.references)} independent models ({', '.join(archs)}), "
                f"test accuracy {min(accs):.1%}-{max(accs):.1%}, {len(self.matches)} key(s) profiled")


Pool = Union[ImageData, Dataset, DataLoader]
TestSet = Union[tuple[np.ndarray, np.ndarray], Dataset, DataLoader]


def _pool_facts(data: Pool, test: TestSet | None, num_classes: int | None, name: str | None
                ) -> tuple[str, int, tuple[int, ...], int, TestSet]:
    """Name, class count, input shape, size and test set of the reference models' training pool (checked first)."""
    if isinstance(data, ImageData):
        return data.name, data.num_classes, data.input_shape, len(data.x_train), (data.x_test, data.y_test) if test is None else test
    pool = dataset_of(data)
    if isinstance(pool, IterableDataset):
        raise NullProfileError("reference models train on seeded subsets drawn by index; give a map-style Dataset")
    if test is None or num_classes is None:
        raise NullProfileError("reference models trained on a Dataset need test= (held-out items) and num_classes=")
    check_items(pool)
    shape = tuple(item_pair(pool[0])[0].shape)
    if is_stream(test):
        check_items(test, shape)  # type: ignore[arg-type]
    return name or type(pool).__name__, int(num_classes), shape, len(pool), test  # type: ignore[arg-type]


def _train_reference(shared: dict[str, Any], job: tuple[str, int]) -> tuple[nn.Module, float]:
    """One task: reference model ``(arch, seed)`` trained on its seeded subset, and its held-out accuracy."""
    s = shared
    arch, seed = job
    data = s["data"]
    rows = np.random.default_rng(seed).permutation(s["n_pool"])[: s["n_train"]]
    model = build_model(arch, s["shape"], s["num_classes"], seed=seed)
    train = (to_tensor_dataset(data.x_train[rows], data.y_train[rows]) if isinstance(data, ImageData)
             else Subset(dataset_of(data), rows.tolist()))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fit(model, train, epochs=s["epochs"], lr=s["lr"], seed=seed, device=s["device"], num_workers=s["num_workers"])
    return model, held_out_accuracy(model, s["test"], s["device"], s["num_workers"])


def build_null_profile(
    data: Pool,
    keys: Sequence[WatermarkKey] = (),
    *,
    n_models: int = 20,
    archs: Sequence[str] = DEFAULT_ARCHS,
    epochs: int = 2,
    train_size: int | None = None,
    lr: float = 1e-3,
    first_seed: int = 1000,
    folder: str | Path | None = None,
    show_progress: bool = False,
    test: TestSet | None = None,
    num_classes: int | None = None,
    name: str | None = None,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    executor: Executor | None = None,
) -> tuple[NullProfile, list[nn.Module]]:
    """Train (or load from ``folder``) ``n_models`` independent models and profile ``keys`` on them.

    Model ``i`` uses architecture ``archs[i % len(archs)]``, seed ``first_seed + i`` (weights,
    shuffling, and a random training subset of ``train_size`` images when given).
    ``data`` is an :class:`ImageData` or a map-style ``Dataset``/``DataLoader`` of training
    items, read batch by batch through a ``Subset`` (never whole; the same arrays in either
    form train the same models); a Dataset needs ``test`` (arrays or a Dataset), ``num_classes``
    and a ``name`` for the cached files (default: the dataset's class name). Models train on
    ``device`` (default: CUDA, else MPS, else CPU) with ``num_workers`` reading.
    Each model not in ``folder`` is one task of ``executor`` (default: one after another in
    this process; a :class:`~tracemark.executor.LocalExecutor` or
    :class:`~tracemark.executor.RayExecutor` trains them in parallel, one torch thread per
    task, the same models on either); the data are put once, and each model is saved to
    ``folder`` here as it completes.
    Returns the profile and the models, so more keys can be added without reloading.
    """
    label, k, shape, n_pool, test_set = _pool_facts(data, test, num_classes, name)
    folder = Path(folder) if folder is not None else None
    n_train = n_pool if train_size is None else min(train_size, n_pool)
    dev = resolve_device(device)
    runner = on_device(executor, dev.type)
    jobs = [(archs[i % len(archs)], first_seed + i) for i in range(n_models)]
    names = {job: f"{label}-{job[0]}-seed{job[1]}-e{epochs}-n{n_train}-lr{lr:g}.safetensors" for job in jobs}
    made: dict[tuple[str, int], tuple[nn.Module, float]] = {}
    for job in jobs:
        if folder is not None and (folder / names[job]).is_file():
            model = load_model(folder / names[job])
            made[job] = model, held_out_accuracy(model, test_set, dev, num_workers)

    def keep(job: tuple[str, int], result: tuple[nn.Module, float]) -> None:
        made[job] = result
        if folder is not None:
            save_model(result[0], folder / names[job])

    shared = runner.put(dict(data=data, test=test_set, shape=shape, num_classes=k, n_pool=n_pool, n_train=n_train,
                             epochs=epochs, lr=lr, device=dev, num_workers=num_workers))
    try:
        runner.map(_train_reference, [job for job in jobs if job not in made], shared=shared,
                   describe=lambda job: f"reference {job[0]} seed {job[1]}", on_result=keep,
                   description="training independent models", show_progress=show_progress)
    finally:
        runner.release(shared)
        if runner is not executor:
            runner.close()
    refs: list[ReferenceModel] = []
    for arch, seed in jobs:
        path = folder / names[arch, seed] if folder is not None else None
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path is not None else None
        refs.append(ReferenceModel(arch, seed, epochs, n_train, lr, made[arch, seed][1],
                                   names[arch, seed] if path is not None else None, digest))
    models = [made[job][0] for job in jobs]
    profile = NullProfile(
        dataset=label,
        references=refs,
        created_at=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        recipe={"n_models": n_models, "archs": list(archs), "epochs": epochs, "train_size": n_train, "lr": lr,
                "first_seed": first_seed, "optimiser": "Adam", "batch_size": 64,
                "subset": "seeded random subset per model" if n_train < n_pool else "full training set",
                "torch": torch.__version__},
    )
    for key in keys:
        profile.add_key(key, models)
    return profile, models
