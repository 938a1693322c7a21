"""Making customer copies: the base's body computes features once; each customer gets its own fine-tuned head, in parallel."""

from __future__ import annotations

import copy
import hashlib
import multiprocessing
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tracemark._progress import progress_bar
from tracemark.data.datasets import ImageData
from tracemark.errors import ShapeMismatchError
from tracemark.fingerprint.codes import FingerprintScheme, unique_ids
from tracemark.fingerprint.errors import CodeGoalWarning, FingerprintError
from tracemark.fingerprint.weights import DEFAULT_STRENGTH, add_weight_code
from tracemark.training import accuracy


@dataclass(frozen=True)
class TrainSettings:
    """How each customer's copy is fine-tuned.

    Only the model's head (its modules from the first ``nn.Linear`` on) is trained, on
    features the frozen body computed once for all customers: ``pool_size`` clean training
    images and as many stamped ones (random image, random drawing). Each step takes
    ``batch_size`` items, ``trigger_fraction`` of them stamped and labelled with the
    customer's code; on the clean rest a KL term (weight ``preserve_weight``) keeps the
    base's answers. A fine-tune stops once ``target_code_accuracy`` of the tracing queries
    carry the code and clean accuracy on the first ``validation_size`` test images is at
    most ``max_clean_drop`` below the base's (checked every ``eval_every`` steps, from
    ``min_steps`` on), or after ``max_steps``. A copy that misses the code goal keeps the
    checkpoint with the most code among those within the clean budget (the budget is never
    exceeded on the validation images) and is reported with ``reached_goal=False`` and a
    :class:`CodeGoalWarning`.

    Before the fine-tune, ``weight_strength`` times each coded tensor's RMS times the
    customer's keyed signs is added to the copy's weights (the white-box code read by
    :func:`~tracemark.fingerprint.weights.weight_trace`; 0 leaves it out); the clean budget
    and the code goal are checked on the copy as shipped, weight code included.
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

    def __post_init__(self) -> None:
        if not self.weight_strength >= 0:
            raise ValueError("weight_strength must be 0 (no weight code) or positive")


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

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        change = 100 * (self.clean_accuracy_after - self.clean_accuracy_before)
        flag = "" if self.reached_goal else f"  (DID NOT reach its goal: {self.note})"
        return (f"{self.customer}: clean {100 * self.clean_accuracy_after:.2f}% ({change:+.2f} pts), code "
                f"{100 * self.code_accuracy:.0f}%, {self.steps} steps, {self.seconds:.1f} s{flag}")


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


def _check(scheme: FingerprintScheme, data: ImageData) -> None:
    if tuple(data.input_shape) != tuple(scheme.key.input_shape) or data.num_classes != scheme.num_classes:
        raise ShapeMismatchError(f"data {data.name} has shape {data.input_shape} and {data.num_classes} classes; "
                                 f"the key has {tuple(scheme.key.input_shape)} and {scheme.num_classes}")


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


@dataclass
class FeatureCache:
    """What the frozen body computes once for all customers: features of clean, stamped, query and validation images."""

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


@torch.no_grad()
def _features(body: nn.Module, x: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
    return torch.cat([body(x[i : i + chunk]) for i in range(0, len(x), chunk)]) if len(x) else torch.zeros(0)


def feature_cache(base: nn.Module, scheme: FingerprintScheme, data: ImageData,
                  settings: TrainSettings = TrainSettings()) -> FeatureCache:
    """Run the base's body once over the pools every customer's fine-tune draws from (seeded by ``settings.seed``)."""
    _check(scheme, data)
    split = head_start(base)
    base.eval()
    body = base[:split]
    gen = torch.Generator().manual_seed(settings.seed)
    x = torch.from_numpy(np.ascontiguousarray(data.x_train, dtype=np.float32))
    y = torch.from_numpy(np.asarray(data.y_train, dtype=np.int64))
    n = min(settings.pool_size, len(x))
    clean_idx = torch.randperm(len(x), generator=gen)[:n]
    stamped_idx = torch.randperm(len(x), generator=gen)[:n]
    drawings = torch.randint(scheme.n_drawings, (n,), generator=gen)
    stamper = _Stamper(scheme)
    clean = _features(body, x[clean_idx])
    with torch.no_grad():
        teacher = F.log_softmax(base[split:](clean), dim=1)
        stamped = torch.cat([body(stamper(x[stamped_idx[i : i + 1000]], drawings[i : i + 1000])) for i in range(0, n, 1000)])
    val_x = data.x_test[: settings.validation_size]
    return FeatureCache(split, clean, y[clean_idx], teacher, stamped, y[stamped_idx], drawings,
                        _features(body, torch.from_numpy(scheme.queries.inputs)),
                        _features(body, torch.from_numpy(np.ascontiguousarray(val_x, dtype=np.float32))),
                        torch.from_numpy(np.asarray(data.y_test[: settings.validation_size], dtype=np.int64)),
                        accuracy(base, data.x_test, data.y_test))


def code_accuracy(model: nn.Module, scheme: FingerprintScheme, customer_id: str) -> float:
    """Fraction of the tracing queries that ``model`` answers with ``customer_id``'s label."""
    q = scheme.queries
    return accuracy(model, q.inputs, scheme.label_matrix([customer_id], q.drawing_ids, q.true_labels)[0])


def _customer_seed(scheme: FingerprintScheme, customer_id: str, seed: int) -> int:
    digest = hashlib.sha256(scheme.customer_secret(customer_id) + seed.to_bytes(8, "little", signed=True)).digest()
    return int.from_bytes(digest[:4], "little")


def mark_customer(base: nn.Module, scheme: FingerprintScheme, customer_id: str, data: ImageData, *,
                  settings: TrainSettings = TrainSettings(), cache: FeatureCache | None = None,
                  show_progress: bool = False) -> tuple[nn.Module, CopyReport]:
    """A copy of ``base`` whose head is fine-tuned to carry ``customer_id``'s code (``base`` is not changed).

    ``cache`` (from :func:`feature_cache` with the same base, data and settings) saves
    recomputing the body's features for every customer.
    """
    start = time.perf_counter()
    cache = cache if cache is not None else feature_cache(base, scheme, data, settings)
    model = copy.deepcopy(base)
    head = model[cache.split :]
    q = scheme.queries
    with torch.no_grad():
        head.eval()
        val_before = float((head(cache.validation).argmax(1) == cache.validation_labels).float().mean())
    queries, validation = cache.queries, cache.validation
    if settings.weight_strength > 0:
        add_weight_code(model, scheme, customer_id, settings.weight_strength)
        body = model[: cache.split].eval()
        val_x = np.ascontiguousarray(data.x_test[: settings.validation_size], dtype=np.float32)
        queries, validation = _features(body, torch.from_numpy(q.inputs)), _features(body, torch.from_numpy(val_x))
    code = torch.from_numpy(scheme.label_matrix([customer_id], q.drawing_ids, q.true_labels)[0])
    table = torch.from_numpy(scheme.class_map(customer_id))
    stamped_targets = table[cache.stamped_drawings, cache.stamped_labels]
    n_trig = max(1, int(round(settings.batch_size * settings.trigger_fraction)))
    n_clean = settings.batch_size - n_trig
    gen = torch.Generator().manual_seed(_customer_seed(scheme, customer_id, settings.seed))
    optimiser = torch.optim.Adam(head.parameters(), lr=settings.lr)

    @torch.no_grad()
    def check() -> tuple[float, float]:
        head.eval()
        code_acc = float((head(queries).argmax(1) == code).float().mean())
        val_acc = float((head(validation).argmax(1) == cache.validation_labels).float().mean())
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
            ci = torch.randint(len(cache.clean), (n_clean,), generator=gen)
            ti = torch.randint(len(cache.stamped), (n_trig,), generator=gen)
            log_clean = F.log_softmax(head(cache.clean[ci]), dim=1)
            log_trig = F.log_softmax(head(cache.stamped[ti]), dim=1)
            loss = (F.nll_loss(log_clean, cache.clean_labels[ci]) * n_clean
                    + F.nll_loss(log_trig, stamped_targets[ti]) * n_trig) / settings.batch_size
            if settings.preserve_weight > 0:
                loss = loss + settings.preserve_weight * F.kl_div(log_clean, cache.teacher_log_probs[ci],
                                                                  log_target=True, reduction="batchmean")
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
    report = CopyReport(customer_id, scheme.code_commitment(customer_id), cache.base_accuracy,
                        accuracy(model, data.x_test, data.y_test), code_acc, steps, steps * settings.batch_size,
                        time.perf_counter() - start, reached, note=note)
    return model, report


# State shared with forked worker processes (copy-on-write; nothing large is pickled).
_SHARED: dict[str, Any] = {}


def _init_worker() -> None:
    torch.set_num_threads(1)


def _make_copy(customer_id: str) -> CopyReport:
    from tracemark._util.files import atomic_write_bytes
    from tracemark.data.models import model_bytes

    s = _SHARED
    model, report = mark_customer(s["base"], s["scheme"], customer_id, s["data"], settings=s["settings"], cache=s["cache"])
    raw = model_bytes(model)
    path = Path(s["out_dir"]) / f"{customer_id}.safetensors"
    atomic_write_bytes(path, raw, mode=0o644)
    return CopyReport(**{**report.to_dict(), "model_path": str(path), "model_sha256": hashlib.sha256(raw).hexdigest()})


def fanout(base: nn.Module, scheme: FingerprintScheme, customers: Sequence[str], data: ImageData, out_dir: str | Path,
           *, workers: int = 1, settings: TrainSettings = TrainSettings(),
           on_copy: Callable[[CopyReport], None] | None = None, show_progress: bool = False) -> FanoutReport:
    """Make one marked copy of ``base`` per customer in ``out_dir/<customer>.safetensors``.

    ``base`` must be a model from :func:`tracemark.build_model` (or any ``nn.Sequential``
    ending in Linear layers, saved with a spec). The body's features are computed once;
    with ``workers > 1`` copies are made in forked processes, one torch thread each.
    ``on_copy(report)`` is called in this process as each copy is written (the CLI records
    it in the registry there). Reports come back in the order of ``customers``; the
    report's ``seconds`` is the wall time of everything, features included.
    """
    customers = unique_ids(customers)
    _check(scheme, data)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cache = feature_cache(base, scheme, data, settings)
    _SHARED.update(base=base, scheme=scheme, data=data, settings=settings, cache=cache, out_dir=str(out_dir))
    reports: dict[str, CopyReport] = {}

    def done(report: CopyReport) -> None:
        reports[report.customer] = report
        if on_copy is not None:
            on_copy(report)

    try:
        with progress_bar(len(customers), "customer copies", enabled=show_progress) as advance:
            if workers > 1 and len(customers) > 1:
                context = multiprocessing.get_context("fork")
                with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker) as pool:
                    for future in as_completed([pool.submit(_make_copy, c) for c in customers]):
                        done(future.result())
                        advance()
            else:
                for c in customers:
                    done(_make_copy(c))
                    advance()
    finally:
        _SHARED.clear()
    return FanoutReport([reports[c] for c in customers], time.perf_counter() - start, max(1, workers))
