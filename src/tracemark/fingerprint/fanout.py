"""Making customer copies: the base's body computes features once; each customer gets its own fine-tuned head, one task each."""

from __future__ import annotations

import copy
import hashlib
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from tracemark._progress import progress_bar
from tracemark.data.batches import check_items, dataset_of, is_stream, item_pair
from tracemark.data.datasets import ImageData
from tracemark.data.devices import model_device, placed, resolve_device
from tracemark.errors import ClassCountMismatchError, DatasetItemError, ShapeMismatchError
from tracemark.executor import Executor, on_device
from tracemark.fingerprint.codes import FingerprintScheme, unique_ids
from tracemark.fingerprint.errors import CodeGoalWarning, FingerprintError
from tracemark.fingerprint.weights import DEFAULT_STRENGTH, add_weight_code
from tracemark.training import accuracy

Data = Union[ImageData, Dataset, DataLoader]
Validation = Union[tuple[np.ndarray, np.ndarray], Dataset, DataLoader]


@dataclass(frozen=True)
class TrainSettings:
    """How each customer's copy is fine-tuned.

    Only the model's head (its modules from the first ``nn.Linear`` on) is trained, on
    features the frozen body computed once for all customers: ``pool_size`` clean training
    images and as many stamped ones (random image, random drawing). Each step takes
    ``batch_size`` items, ``trigger_fraction`` of them stamped and labelled with the
    customer's code and ``owner_fraction`` of them (at most one per such trigger) the master
    key's own triggers that the base answers with the key's label, with that label (so a copy
    of a marked base keeps the
    owner's trigger mark, and a copy of an unmarked base gains none); on the clean rest a KL
    term (weight ``preserve_weight``) keeps the base's answers. The key's triggers that are
    also tracing queries (drawing 0 on the first source image of each class) are left to the
    code. A
    fine-tune stops once ``target_code_accuracy`` of the tracing queries
    carry the code and clean accuracy on the first ``validation_size`` test images is at
    most ``max_clean_drop`` below the base's (checked every ``eval_every`` steps, from
    ``min_steps`` on), or after ``max_steps``. A copy that misses the code goal keeps the
    checkpoint with the most code among those within the clean budget (the budget is never
    exceeded on the validation images) and is reported with ``reached_goal=False`` and a
    :class:`CodeGoalWarning`. ``owner_fraction=0`` leaves the owner's triggers out (the
    fine-tune of releases before it; copies then lose most of the owner's mark).

    Before the fine-tune, ``weight_strength`` times each coded tensor's RMS times the
    customer's keyed signs is added to the copy's weights (the white-box code read by
    :func:`~tracemark.fingerprint.weights.weight_trace`; 0 leaves it out); the clean budget
    and the code goal are checked on the copy as shipped, weight code included.

    ``feature_match > 0`` puts the code in the features, where a re-trained output layer still
    reads it (RTLL, RTAL): the stamped items' penultimate activations (the output layer's
    input) are pulled toward the base's mean activation for the customer's label on clean
    images (squared distance over the clean activations' mean square, times
    ``feature_match``), and the clean items' toward the base's own (times
    ``feature_preserve``). The code goal is then read as a re-trained head would: a query
    carries the code when its head's label and the nearest class mean both are the
    customer's. ``body_layers`` also fine-tunes that many of the body's last layers with
    weights (0: the head only, on cached features; the cache then holds the features below
    them).
    """

    lr: float = 1e-3
    batch_size: int = 128
    trigger_fraction: float = 0.25
    preserve_weight: float = 1.0
    max_clean_drop: float = 0.003
    target_code_accuracy: float = 0.9
    max_steps: int = 3000
    min_steps: int = 0
    eval_every: int = 50
    pool_size: int = 10000
    validation_size: int = 2000
    seed: int = 0
    weight_strength: float = DEFAULT_STRENGTH
    owner_fraction: float = 0.25
    feature_match: float = 0.0
    feature_preserve: float = 0.0
    body_layers: int = 0

    def __post_init__(self) -> None:
        if not (self.feature_match >= 0 and self.feature_preserve >= 0):
            raise ValueError("feature_match and feature_preserve must be 0 (off) or positive")
        if not (isinstance(self.body_layers, int) and self.body_layers >= 0):
            raise ValueError("body_layers must be a whole number, 0 (the head only) or more")
        if not self.weight_strength >= 0:
            raise ValueError("weight_strength must be 0 (no weight code) or positive")
        if not (0 <= self.owner_fraction and self.owner_fraction + self.trigger_fraction < 1):
            raise ValueError("owner_fraction must be at least 0, and owner_fraction + trigger_fraction below 1")


@dataclass(frozen=True)
class CopyReport:
    """One customer's copy: its code commitment, what marking it cost and achieved, where it went."""

    customer: str
    code_commitment: str
    clean_accuracy_before: float
    clean_accuracy_after: float
    code_accuracy: float
    steps: int
    samples_seen: int
    seconds: float
    reached_goal: bool
    model_path: str = ""
    model_sha256: str = ""
    note: str = ""
    trigger_accuracy_before: float | None = None
    trigger_accuracy_after: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        change = 100 * (self.clean_accuracy_after - self.clean_accuracy_before)
        flag = "" if self.reached_goal else f"  (DID NOT reach its goal: {self.note})"
        owner = "" if self.trigger_accuracy_after is None else (
            f", owner's mark {100 * self.trigger_accuracy_after:.0f}% (base {100 * (self.trigger_accuracy_before or 0):.0f}%)")
        return (f"{self.customer}: clean {100 * self.clean_accuracy_after:.2f}% ({change:+.2f} pts), code "
                f"{100 * self.code_accuracy:.0f}%{owner}, {self.steps} steps, {self.seconds:.1f} s{flag}")


@dataclass(frozen=True)
class FanoutReport:
    """All copies made by :func:`fanout`, with the wall-clock time and worker count."""

    copies: list[CopyReport]
    seconds: float
    workers: int

    def to_dict(self) -> dict:
        return {"copies": [c.to_dict() for c in self.copies], "seconds": self.seconds, "workers": self.workers}

    def __str__(self) -> str:
        ok = sum(c.reached_goal for c in self.copies)
        lines = [f"{len(self.copies)} customer copies in {self.seconds:.1f} s ({self.workers} worker(s)); "
                 f"{ok} reached their goal"]
        lines += [f"  {c}" for c in self.copies]
        return "\n".join(lines)


class _Stamper:
    """Stamps drawings on torch batches exactly as :meth:`FingerprintScheme.stamp` does on arrays."""

    def __init__(self, scheme: FingerprintScheme):
        params = scheme.key.params
        self.row, self.col = int(params["row"]), int(params["col"])
        self.alpha = torch.from_numpy(float(params["opacity"]) * scheme.drawings.astype(np.float32) / 255.0)
        self.size = scheme.drawings.shape[1]

    def __call__(self, x: torch.Tensor, drawing_ids: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        r, c, s = self.row, self.col, self.size
        a = self.alpha[drawing_ids][:, None]
        out[:, :, r : r + s, c : c + s] = (1 - a) * out[:, :, r : r + s, c : c + s] + a
        return out


def _check(scheme: FingerprintScheme, data: Data, validation: Validation | None) -> None:
    """Refuse data of another shape or class count than the key's (for a Dataset: its first item) before any work."""
    if isinstance(data, ImageData):
        if tuple(data.input_shape) != tuple(scheme.key.input_shape) or data.num_classes != scheme.num_classes:
            raise ShapeMismatchError(f"data {data.name} has shape {data.input_shape} and {data.num_classes} classes; "
                                     f"the key has {tuple(scheme.key.input_shape)} and {scheme.num_classes}")
    elif is_stream(data):
        if isinstance(dataset_of(data), IterableDataset):
            raise DatasetItemError("customer copies draw training items by index; give a map-style Dataset (with "
                                   "__getitem__ and __len__), not an IterableDataset")
        check_items(dataset_of(data), scheme.key.input_shape)
    else:
        raise TypeError(f"data must be an ImageData, a Dataset or a DataLoader, not {type(data).__name__}")
    if is_stream(validation):
        check_items(validation, scheme.key.input_shape)  # type: ignore[arg-type]


def _check_labels(labels: torch.Tensor, scheme: FingerprintScheme, what: str) -> None:
    bad = labels[(labels < 0) | (labels >= scheme.num_classes)]
    if len(bad):
        raise ClassCountMismatchError(f"the {what} hold label {int(bad[0])}; the key has {scheme.num_classes} classes "
                                      f"(labels 0-{scheme.num_classes - 1})")


def head_start(model: nn.Module) -> int:
    """Index of the first ``nn.Linear`` in an ``nn.Sequential`` model: where the trained head begins."""
    if isinstance(model, nn.Sequential):
        for i, module in enumerate(model):
            if isinstance(module, nn.Linear):
                if isinstance(model[-1], nn.Linear):
                    return i
                break
    raise FingerprintError("customer copies need an nn.Sequential model whose head is Linear layers ending in an "
                           "nn.Linear (as every tracemark.build_model architecture is)")


def train_start(model: nn.Module, body_layers: int = 0) -> int:
    """Index in ``model`` where the fine-tuned part begins: the head (:func:`head_start`), moved back
    over the body's last ``body_layers`` modules that hold weights (0 when there are not that many)."""
    split = head_start(model)
    if body_layers <= 0:
        return split
    held = [i for i in range(split) if any(True for _ in model[i].parameters())]
    return held[-body_layers] if body_layers <= len(held) else 0


@torch.no_grad()
def _class_means(penultimate: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, float]:
    """The mean penultimate activation of each class, and the activations' mean square (the feature loss's scale)."""
    means = torch.stack([penultimate[labels == c].mean(0) if bool((labels == c).any()) else penultimate.mean(0)
                         for c in range(num_classes)])
    return means, float(penultimate.pow(2).mean().clamp_min(1e-12))


@dataclass
class FeatureCache:
    """What the frozen body computes once for all customers: features of clean, stamped, query and validation
    images, and of the master key's triggers that the base answers with the key's label.

    Everything is on the CPU and bounded by the settings (``pool_size`` clean and stamped items,
    ``validation_size`` validation items, the key's triggers), never the whole data set.
    """

    split: int
    clean: torch.Tensor
    clean_labels: torch.Tensor
    teacher_log_probs: torch.Tensor
    stamped: torch.Tensor
    stamped_labels: torch.Tensor
    stamped_drawings: torch.Tensor
    queries: torch.Tensor
    validation: torch.Tensor
    validation_labels: torch.Tensor
    base_accuracy: float
    owner: torch.Tensor | None = None
    owner_rows: torch.Tensor | None = None
    base_trigger_accuracy: float | None = None
    class_means: torch.Tensor | None = None
    clean_penultimate: torch.Tensor | None = None
    feature_scale: float = 1.0


class _At(Dataset):
    """The items of ``base`` at ``indices``, as float32 images and int64 labels."""

    def __init__(self, base: Dataset, indices: Sequence[int]):
        self.base, self.indices = base, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return item_pair(self.base[self.indices[i]])


def _workers(data: Data | Validation, num_workers: int) -> int:
    return data.num_workers if isinstance(data, DataLoader) else num_workers


def _read(data: Data, indices: torch.Tensor, batch_size: int, num_workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The training items at ``indices``, in that order, ``batch_size`` at a time (only those items are read)."""
    if isinstance(data, ImageData):
        x = torch.from_numpy(np.ascontiguousarray(data.x_train, dtype=np.float32))
        y = torch.from_numpy(np.asarray(data.y_train, dtype=np.int64))
        for i in range(0, len(indices), batch_size):
            yield x[indices[i : i + batch_size]], y[indices[i : i + batch_size]]
        return
    loader = DataLoader(_At(dataset_of(data), indices.tolist()), batch_size=batch_size,
                        num_workers=_workers(data, num_workers))
    for xb, yb in loader:
        yield xb, yb.reshape(-1)


def _n_train(data: Data) -> int:
    return len(data.x_train) if isinstance(data, ImageData) else len(dataset_of(data))  # type: ignore[arg-type]


def _clean_sets(data: Data, validation: Validation | None, settings: TrainSettings) -> tuple[Validation, Validation]:
    """The set the clean budget is checked on (its first ``validation_size`` items), and the one reports measure.

    ImageData: its first ``validation_size`` test images, and all of them. Given ``validation``:
    it, for both. Otherwise (a Dataset): a seeded ``validation_size``-item subset of the training
    set, for both (it then measures drift from the base's own training fit).
    """
    if validation is not None:
        return validation, validation
    if isinstance(data, ImageData):
        return (data.x_test, data.y_test), (data.x_test, data.y_test)
    pool = dataset_of(data)
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(settings.seed))  # type: ignore[arg-type]
    subset = Subset(pool, sorted(order[: settings.validation_size].tolist()))
    return subset, subset


def _run(module: nn.Module, xb: torch.Tensor, dev: torch.device) -> torch.Tensor:
    return module(xb.to(dev)).cpu()


@torch.no_grad()
def _features(body: nn.Module, x: torch.Tensor, dev: torch.device, chunk: int = 1000) -> torch.Tensor:
    return torch.cat([_run(body, x[i : i + chunk], dev) for i in range(0, len(x), chunk)]) if len(x) else torch.zeros(0)


@torch.no_grad()
def _validation_features(body: nn.Module, val: Validation, n: int, dev: torch.device, batch_size: int,
                         num_workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The body's features of the first ``n`` validation items, and their labels."""
    if not is_stream(val):
        vx, vy = val  # type: ignore[misc]
        x = torch.from_numpy(np.ascontiguousarray(vx[:n], dtype=np.float32))
        return _features(body, x, dev), torch.from_numpy(np.asarray(vy[:n], dtype=np.int64))
    dataset = dataset_of(val)  # type: ignore[arg-type]
    rows = range(min(n, len(dataset)))  # type: ignore[arg-type]
    feats, labels = [], []
    for xb, yb in DataLoader(_At(dataset, rows), batch_size=batch_size, num_workers=_workers(val, num_workers)):
        feats.append(_run(body, xb, dev))
        labels.append(yb.reshape(-1))
    return (torch.cat(feats), torch.cat(labels)) if feats else (torch.zeros(0), torch.zeros(0, dtype=torch.int64))


def _accuracy(model: nn.Module, data: Validation, dev: torch.device, batch_size: int, num_workers: int) -> float:
    if is_stream(data):
        return accuracy(model, data, batch_size=batch_size, device=dev, num_workers=_workers(data, num_workers))
    return accuracy(model, *data, device=dev)  # type: ignore[misc]


def _owner_rows(scheme: FingerprintScheme, inputs: np.ndarray, kept: np.ndarray) -> torch.Tensor:
    """The master key's triggers where ``kept`` (the base gives the key's label) that are not also tracing queries
    (those carry the customer's code instead)."""
    queries = {row.tobytes() for row in scheme.queries.inputs}
    return torch.tensor([i for i, row in enumerate(inputs) if kept[i] and row.tobytes() not in queries], dtype=torch.int64)


def feature_cache(base: nn.Module, scheme: FingerprintScheme, data: Data, settings: TrainSettings = TrainSettings(), *,
                  validation: Validation | None = None, device: str | torch.device | None = None,
                  num_workers: int = 0, read_batch_size: int = 1000) -> FeatureCache:
    """Run the base's body once over the pools every customer's fine-tune draws from (seeded by ``settings.seed``).

    ``data`` is an :class:`ImageData` or a map-style ``Dataset``/``DataLoader`` of ``(x, y)``:
    only the ``pool_size`` clean and stamped items drawn from it are read (``read_batch_size``
    at a time, with ``num_workers``; a loader lends its workers), the same indices for the same
    arrays in either form, so an ImageData and a ``TensorDataset`` of its arrays give the same
    cache. ``validation`` (arrays or a Dataset) as in :func:`mark_customer`. The body runs on
    ``device`` (default: CUDA, else MPS, else CPU); the features are kept on the CPU.
    """
    _check(scheme, data, validation)
    split = train_start(base, settings.body_layers)
    check_set, report_set = _clean_sets(data, validation, settings)
    with placed(base, device) as dev:
        base.eval()
        body = base[:split]
        gen = torch.Generator().manual_seed(settings.seed)
        n_pool = _n_train(data)
        n = min(settings.pool_size, n_pool)
        clean_idx = torch.randperm(n_pool, generator=gen)[:n]
        stamped_idx = torch.randperm(n_pool, generator=gen)[:n]
        drawings = torch.randint(scheme.n_drawings, (n,), generator=gen)
        stamper = _Stamper(scheme)
        with torch.no_grad():
            clean_parts, clean_labels = [], []
            for xb, yb in _read(data, clean_idx, read_batch_size, num_workers):
                clean_parts.append(_run(body, xb, dev))
                clean_labels.append(yb)
            clean = torch.cat(clean_parts)
            teacher = F.log_softmax(base[split:](clean.to(dev)), dim=1).cpu()
            stamped_parts, stamped_labels, at = [], [], 0
            for xb, yb in _read(data, stamped_idx, read_batch_size, num_workers):
                stamped_parts.append(_run(body, stamper(xb, drawings[at : at + len(xb)]), dev))
                stamped_labels.append(yb)
                at += len(xb)
            triggers = scheme.key.triggers()
            owner_x = torch.from_numpy(triggers.inputs)
            marked = _features(base, owner_x, dev).argmax(1).numpy() == triggers.labels
            owner_rows = _owner_rows(scheme, triggers.inputs, marked)
        labels = torch.cat(clean_labels)
        _check_labels(torch.cat([labels, *stamped_labels]), scheme, "training items")
        val_feats, val_labels = _validation_features(body, check_set, settings.validation_size, dev, read_batch_size,
                                                     num_workers)
        _check_labels(val_labels, scheme, "validation items")
        means, penultimate, scale = None, None, 1.0
        if settings.feature_match > 0 or settings.feature_preserve > 0:
            penultimate = _features(base[split:-1], clean, dev)
            means, scale = _class_means(penultimate, labels, scheme.num_classes)
        return FeatureCache(split, clean, labels, teacher, torch.cat(stamped_parts), torch.cat(stamped_labels), drawings,
                            _features(body, torch.from_numpy(scheme.queries.inputs), dev), val_feats, val_labels,
                            _accuracy(base, report_set, dev, read_batch_size, num_workers),
                            _features(body, owner_x[owner_rows], dev), owner_rows, float(np.mean(marked)),
                            means, penultimate, scale)


def code_accuracy(model: nn.Module, scheme: FingerprintScheme, customer_id: str) -> float:
    """Fraction of the tracing queries that ``model`` answers with ``customer_id``'s label."""
    q = scheme.queries
    return accuracy(model, q.inputs, scheme.label_matrix([customer_id], q.drawing_ids, q.true_labels)[0])


def _customer_seed(scheme: FingerprintScheme, customer_id: str, seed: int) -> int:
    digest = hashlib.sha256(scheme.customer_secret(customer_id) + seed.to_bytes(8, "little", signed=True)).digest()
    return int.from_bytes(digest[:4], "little")


def mark_customer(base: nn.Module, scheme: FingerprintScheme, customer_id: str, data: Data, *,
                  settings: TrainSettings = TrainSettings(), cache: FeatureCache | None = None,
                  show_progress: bool = False, validation: Validation | None = None,
                  device: str | torch.device | None = None, num_workers: int = 0,
                  read_batch_size: int = 1000) -> tuple[nn.Module, CopyReport]:
    """A copy of ``base`` whose head is fine-tuned to carry ``customer_id``'s code (``base`` is not changed).

    ``cache`` (from :func:`feature_cache` with the same base, data, validation and settings)
    saves recomputing the body's features for every customer. ``data`` is an
    :class:`ImageData` or a map-style ``Dataset``/``DataLoader`` of ``(x, y)`` (read only
    through :func:`feature_cache` and the validation items). The clean budget is checked on
    the first ``validation_size`` items of ``validation`` (arrays ``(x, y)`` or a Dataset);
    without it, of an ImageData's test images (the report then measures all of them) or of a
    seeded subset of a Dataset's training items. The fine-tune runs on ``device`` (default:
    CUDA, else MPS, else CPU); the copy comes back on the base's device.
    The copy keeps the base's answers to the master key's triggers where they are the key's
    labels (see ``TrainSettings.owner_fraction``); the report gives the base's and the copy's
    trigger accuracy.
    """
    start = time.perf_counter()
    dev = resolve_device(device)
    cache = cache if cache is not None else feature_cache(base, scheme, data, settings, validation=validation, device=dev,
                                                          num_workers=num_workers, read_batch_size=read_batch_size)
    check_set, report_set = _clean_sets(data, validation, settings)
    home = model_device(base)
    model = copy.deepcopy(base).to("cpu")
    head = model[cache.split :].to(dev)
    q = scheme.queries
    val_labels = cache.validation_labels.to(dev)
    with torch.no_grad():
        head.eval()
        val_before = float((head(cache.validation.to(dev)).argmax(1) == val_labels).float().mean())
    model.to("cpu")  # the weight code is added on the CPU (its signs are made there)
    queries, validation_f, owner = cache.queries, cache.validation, cache.owner
    triggers = scheme.key.triggers()
    owner_x = torch.from_numpy(triggers.inputs)
    if settings.weight_strength > 0:
        add_weight_code(model, scheme, customer_id, settings.weight_strength)
        body = model[: cache.split].to(dev).eval()
        queries = _features(body, torch.from_numpy(q.inputs), dev)
        validation_f = _validation_features(body, check_set, settings.validation_size, dev, read_batch_size, num_workers)[0]
        if cache.owner is not None and cache.owner_rows is not None:
            owner = _features(body, owner_x[cache.owner_rows], dev)
    model.to(dev)
    queries, validation_f = queries.to(dev), validation_f.to(dev)
    clean, clean_labels, teacher = cache.clean.to(dev), cache.clean_labels.to(dev), cache.teacher_log_probs.to(dev)
    stamped = cache.stamped.to(dev)
    code = torch.from_numpy(scheme.label_matrix([customer_id], q.drawing_ids, q.true_labels)[0]).to(dev)
    table = torch.from_numpy(scheme.class_map(customer_id))
    stamped_targets = table[cache.stamped_drawings, cache.stamped_labels].to(dev)
    n_trig = max(1, int(round(settings.batch_size * settings.trigger_fraction)))
    use_owner = settings.owner_fraction > 0 and owner is not None and len(owner) > 0
    n_owner = min(len(owner), max(1, int(round(settings.batch_size * settings.owner_fraction)))) if use_owner else 0  # type: ignore[arg-type]
    n_clean = settings.batch_size - n_trig - n_owner
    if use_owner:
        assert owner is not None and cache.owner_rows is not None
        owner, owner_targets = owner.to(dev), torch.from_numpy(triggers.labels)[cache.owner_rows].to(dev)
    gen = torch.Generator().manual_seed(_customer_seed(scheme, customer_id, settings.seed))
    optimiser = torch.optim.Adam(head.parameters(), lr=settings.lr)
    in_features = settings.feature_match > 0 or settings.feature_preserve > 0
    penultimate, output = head[:-1], head[-1]
    if in_features:
        assert cache.class_means is not None and cache.clean_penultimate is not None
        means, base_penultimate = cache.class_means.to(dev), cache.clean_penultimate.to(dev)

    @torch.no_grad()
    def check() -> tuple[float, float]:
        head.eval()
        if in_features:  # the code as a re-trained output layer would read it: the head's label and the nearest class mean
            h = penultimate(queries)
            code_acc = float(((output(h).argmax(1) == code) & (torch.cdist(h, means).argmin(1) == code)).float().mean())
        else:
            code_acc = float((head(queries).argmax(1) == code).float().mean())
        val_acc = float((head(validation_f).argmax(1) == val_labels).float().mean())
        return code_acc, val_acc

    best_code, val_start = check()
    if val_before - val_start > settings.max_clean_drop:
        raise FingerprintError(f"customer {customer_id}: the weight code alone costs {100 * (val_before - val_start):.2f} "
                               f"points on the validation images, more than the budget of {100 * settings.max_clean_drop:.2f}; "
                               "lower the weight-code strength")
    best_state = copy.deepcopy(head.state_dict())
    steps, reached = 0, False
    with progress_bar(settings.max_steps, f"marking {customer_id}", enabled=show_progress) as advance:
        while steps < settings.max_steps:
            head.train()
            ci = torch.randint(len(cache.clean), (n_clean,), generator=gen).to(dev)
            ti = torch.randint(len(cache.stamped), (n_trig,), generator=gen).to(dev)
            h_clean = penultimate(clean[ci])
            log_clean = F.log_softmax(output(h_clean), dim=1)
            if n_owner:  # the owner's triggers ride in the same forward pass as the stamped items
                oi = torch.randint(len(owner), (n_owner,), generator=gen).to(dev)  # type: ignore[arg-type]
                h_marks = penultimate(torch.cat([stamped[ti], owner[oi]]))  # type: ignore[index]
                log_marks = F.log_softmax(output(h_marks), dim=1)
                log_trig, h_trig = log_marks[:n_trig], h_marks[:n_trig]
                owner_loss = F.nll_loss(log_marks[n_trig:], owner_targets[oi]) * n_owner  # type: ignore[index]
            else:
                h_trig = penultimate(stamped[ti])
                log_trig = F.log_softmax(output(h_trig), dim=1)
            loss = F.nll_loss(log_clean, clean_labels[ci]) * n_clean + F.nll_loss(log_trig, stamped_targets[ti]) * n_trig
            if n_owner:
                loss = loss + owner_loss
            loss = loss / settings.batch_size
            if settings.feature_match > 0:
                pull = (h_trig - means[stamped_targets[ti]]).pow(2).mean() / cache.feature_scale
                loss = loss + settings.feature_match * pull
            if settings.feature_preserve > 0:
                keep = (h_clean - base_penultimate[ci]).pow(2).mean() / cache.feature_scale
                loss = loss + settings.feature_preserve * keep
            if settings.preserve_weight > 0:
                loss = loss + settings.preserve_weight * F.kl_div(log_clean, teacher[ci], log_target=True,
                                                                  reduction="batchmean")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            steps += 1
            advance()
            if steps % settings.eval_every == 0 or steps == settings.max_steps:
                code_acc, val_acc = check()
                within = val_before - val_acc <= settings.max_clean_drop
                if within and code_acc >= settings.target_code_accuracy and steps >= settings.min_steps:
                    reached = True
                    break
                if within and code_acc > best_code:
                    best_code, best_state = code_acc, copy.deepcopy(head.state_dict())
    note = ""
    if not reached:
        head.load_state_dict(best_state)
        note = (f"after {steps} steps no checkpoint had {settings.target_code_accuracy:.0%} of the queries carrying the code "
                f"within the clean budget ({100 * settings.max_clean_drop:.2f} points); kept the best one within it "
                f"({best_code:.0%} of the queries); try more steps, a higher learning rate or a lower code goal")
        warnings.warn(f"customer {customer_id}: {note}", CodeGoalWarning, stacklevel=2)
    model.eval()
    code_acc, _ = check()
    trigger_after = accuracy(model, triggers.inputs, triggers.labels, device=dev)
    clean_after = _accuracy(model, report_set, dev, read_batch_size, num_workers)
    model.to(home)
    report = CopyReport(customer_id, scheme.code_commitment(customer_id), cache.base_accuracy, clean_after, code_acc,
                        steps, steps * settings.batch_size, time.perf_counter() - start, reached, note=note,
                        trigger_accuracy_before=cache.base_trigger_accuracy, trigger_accuracy_after=trigger_after)
    return model, report


def _make_copy(shared: dict[str, Any], customer_id: str) -> tuple[CopyReport, bytes]:
    """One task: ``customer_id``'s copy as safetensors bytes, and its report (written and hashed by the driver)."""
    from tracemark.data.models import model_bytes

    s = shared
    model, report = mark_customer(s["base"], s["scheme"], customer_id, s["data"], settings=s["settings"], cache=s["cache"],
                                  **s["options"])
    return report, model_bytes(model)


def fanout(base: nn.Module, scheme: FingerprintScheme, customers: Sequence[str], data: Data, out_dir: str | Path,
           *, workers: int = 1, settings: TrainSettings = TrainSettings(),
           on_copy: Callable[[CopyReport], None] | None = None, show_progress: bool = False,
           validation: Validation | None = None, device: str | torch.device | None = None, num_workers: int = 0,
           read_batch_size: int = 1000, executor: Executor | None = None) -> FanoutReport:
    """Make one marked copy of ``base`` per customer in ``out_dir/<customer>.safetensors``.

    ``base`` must be a model from :func:`tracemark.build_model` (or any ``nn.Sequential``
    ending in Linear layers, saved with a spec). The body's features are computed once, here;
    each copy is then one task of ``executor`` (default: a :class:`~tracemark.executor.LocalExecutor`
    of ``workers`` forked processes, one torch thread each; a
    :class:`~tracemark.executor.RayExecutor` runs them on a Ray cluster, byte for byte the same
    copies). The base, the data and the feature cache are put once, not pickled per copy. On a
    CUDA or MPS ``device`` copies are made one after another in this process instead (forked
    processes cannot share the device). ``data``, ``validation``, ``device``, ``num_workers``
    and ``read_batch_size`` as in :func:`feature_cache` and :func:`mark_customer`.
    Each copy comes back to this process, which writes it and calls ``on_copy(report)`` as it
    completes (the CLI records it in the registry there), so copies finished before a failure
    are kept; a copy whose task still fails after the executor's retries is named in the
    :class:`~tracemark.executor.TaskFailedError` raised at the end. Reports come back in the
    order of ``customers``; the report's ``seconds`` is the wall time of everything, features
    included.
    """
    from tracemark._util.files import atomic_write_bytes

    customers = unique_ids(customers)
    _check(scheme, data, validation)
    dev = resolve_device(device)
    runner = on_device(executor, dev.type, workers)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    options = dict(validation=validation, device=dev, num_workers=num_workers, read_batch_size=read_batch_size)
    cache = feature_cache(base, scheme, data, settings, **options)  # type: ignore[arg-type]
    reports: dict[str, CopyReport] = {}

    def done(customer_id: str, made: tuple[CopyReport, bytes]) -> None:
        report, raw = made
        path = Path(out_dir) / f"{customer_id}.safetensors"
        atomic_write_bytes(path, raw, mode=0o644)
        report = CopyReport(**{**report.to_dict(), "model_path": str(path), "model_sha256": hashlib.sha256(raw).hexdigest()})
        reports[customer_id] = report
        if on_copy is not None:
            on_copy(report)

    shared = runner.put(dict(base=base, scheme=scheme, data=data, settings=settings, cache=cache, options=options))
    try:
        runner.map(_make_copy, customers, shared=shared, describe=lambda c: f"customer {c!r}", on_result=done,
                   description="customer copies", show_progress=show_progress)
    finally:
        runner.release(shared)
        if runner is not executor:
            runner.close()
    return FanoutReport([reports[c] for c in customers], time.perf_counter() - start, runner.workers)
