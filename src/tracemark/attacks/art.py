"""Model extraction by IBM's Adversarial Robustness Toolbox: CopycatCNN and KnockoffNets through any Target.

The thief is not ours: ART's own attacks query the victim through a ``BlackBoxClassifier`` whose
predict function calls :meth:`Target.predict` — for a served model an :class:`~tracemark.targets.HttpTarget`,
so every query crosses the real HTTP API with its policy, rate limit, audit and response marking.
``output="label"`` gives ART one-hot labels (``use_probability=False``); ``"probabilities"`` passes the
served probability rows, which ART's ``PyTorchClassifier`` trains on as soft labels.

ART draws its random choices (which pool images to ask, knockoff's sampling) from numpy's global
generator: :meth:`ArtExtract.run` seeds it (and torch) with ``ThiefData.seed``.

ART's attacks take the pool as one numpy array. From an array pool ART picks its ``n_queries``
images itself; from a Dataset pool a seeded sample of ``n_queries`` items is read (only those)
and handed to ART, so the two forms of the same images do not ask the same images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from tracemark.attacks.base import Attack, AttackError, Stolen, ThiefData, as_target, check_pool_shape, stolen_module
from tracemark.data.batches import is_stream, sample_arrays
from tracemark.data.devices import resolve_device
from tracemark.data.models import build_model
from tracemark.targets.base import Target

Method = Literal["copycat", "knockoff"]
Output = Literal["label", "probabilities"]
METHODS: tuple[Method, ...] = ("copycat", "knockoff")


@dataclass
class _CountingTarget:
    """Calls a Target and counts inputs asked, for the stolen model's record."""

    target: Target
    output: Output
    num_classes: int
    asked: int = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        answers = self.target.predict(np.asarray(x, dtype=np.float32))
        self.asked += len(x)
        if self.output == "probabilities":
            if answers.probabilities is None:
                raise AttackError(f"{self.target} answers labels only; use output='label'")
            return np.asarray(answers.probabilities, dtype=np.float32)
        return np.eye(self.num_classes, dtype=np.float32)[answers.labels]


@dataclass(frozen=True)
class ArtExtract(Attack):
    """ART's ``CopycatCNN`` or ``KnockoffNets`` (random sampling) training a fresh ``arch`` on ``n_queries``
    answers to the thief's in-domain (``pool="in"``) or out-of-domain (``"ood"``) images."""

    method: Method = "copycat"
    pool: Literal["in", "ood"] = "in"
    n_queries: int = 5000
    output: Output = "label"
    arch: str = "small_cnn"
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    query_batch: int = 64
    num_classes: int | None = None

    kind = "extract"
    access = "api"

    def __post_init__(self) -> None:
        if self.method not in METHODS or self.output not in ("label", "probabilities") or self.n_queries < 1:
            raise AttackError(f"ArtExtract: method in {METHODS}, output 'label' or 'probabilities', n_queries >= 1")

    @property
    def label(self) -> str:
        domain = "in-domain" if self.pool == "in" else "out-of-domain"
        return f"art-{self.method}-{domain}-{self.output}"

    @property
    def strength(self) -> float:
        return float(self.n_queries)

    def params(self) -> dict[str, Any]:
        return {"arch": self.arch, "n_queries": self.n_queries, "epochs": self.epochs}

    def _classes(self, target: Target, x: np.ndarray) -> int:
        k = self.num_classes or target.num_classes
        if k is None:
            probe = target.predict(x[:1])
            k = target.num_classes if probe.probabilities is None else probe.probabilities.shape[1]
        if k is None:
            raise AttackError(f"{target} does not say how many classes it has; give ArtExtract(num_classes=K)")
        return int(k)

    def run(self, victim: nn.Module | Target, thief: ThiefData) -> Stolen:
        from art.attacks.extraction import CopycatCNN, KnockoffNets
        from art.estimators.classification import BlackBoxClassifier, PyTorchClassifier

        target = as_target(victim)
        pool = thief.pool_set(self.pool)
        if len(pool) < self.n_queries:  # type: ignore[arg-type]
            raise AttackError(f"{self.label}: the pool has {len(pool)} images, fewer than n_queries = {self.n_queries}")  # type: ignore[arg-type]
        check_pool_shape(pool, target, "query")
        if is_stream(pool):  # ART needs an array: read a seeded sample of exactly the images it will ask
            rows = np.sort(np.random.default_rng(thief.seed).choice(len(pool), self.n_queries, replace=False))  # type: ignore[arg-type]
            x = sample_arrays(pool, rows)[0]  # type: ignore[arg-type]
        else:
            x = np.ascontiguousarray(pool, dtype=np.float32)
        shape = tuple(int(d) for d in x.shape[1:])
        k = self._classes(target, x)
        np.random.seed(thief.seed)
        torch.manual_seed(thief.seed)
        calls = _CountingTarget(target, self.output, k)
        blackbox = BlackBoxClassifier(calls, shape, k, clip_values=(0.0, 1.0))
        model = build_model(self.arch, shape, k, seed=thief.seed)  # type: ignore[arg-type]
        stolen = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(model.parameters(), lr=self.lr),
                                   input_shape=shape, nb_classes=k, clip_values=(0.0, 1.0),
                                   device_type="gpu" if resolve_device(thief.device).type == "cuda" else "cpu")
        common = dict(batch_size_fit=self.batch_size, batch_size_query=self.query_batch, nb_epochs=self.epochs,
                      nb_stolen=self.n_queries, use_probability=self.output == "probabilities")
        attack = CopycatCNN(blackbox, **common) if self.method == "copycat" else KnockoffNets(blackbox, sampling_strategy="random", **common)
        attack.extract(x, thieved_classifier=stolen)
        return stolen_module(model, f"{self.label} clone", queries=calls.asked)


__all__ = ["ArtExtract", "METHODS"]
