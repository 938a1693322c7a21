"""Fixtures: every kind of evidence's secrets over the session's marked digits model, a copy for each, and
independent suspects (independently trained digits models, random-answer targets, perturbed weights).

The owner's model is the session's marked model (``models.marked``): its customer copy keeps the trigger mark and
carries the customer's black-box and weight codes; its answers, response-marked for two API clients, train a clone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tracemark as tm
from tests.fingerprint.conftest import DIGITS_SETTINGS
from tracemark.extraction import MarkingSecret, ResponseMarker, ResponseStore
from tracemark.fingerprint import FingerprintScheme, mark_customer
from tracemark.serve.clients import Client
from tracemark.targets import Answers, CallableTarget, TorchTarget

CUSTOMERS = ["acme", "globex", "initech"]
N_RANDOM = 40


@dataclass
class Owned:
    """The owner's evidence and the suspects derived from it."""

    key: tm.WatermarkKey
    base: nn.Module
    scheme: FingerprintScheme
    customer_copy: nn.Module
    store: ResponseStore
    clone: nn.Module


@pytest.fixture(scope="session")
def owned(models, tmp_path_factory: pytest.TempPathFactory) -> Owned:
    scheme = FingerprintScheme.from_key(models.key)
    acme, _ = mark_customer(models.marked, scheme, "acme", models.data, settings=DIGITS_SETTINGS)
    store = ResponseStore(tmp_path_factory.mktemp("responses") / "responses.sqlite")
    marker = ResponseMarker(MarkingSecret(bytes(range(32))), store, rate=0.05, cap=None)
    x = models.data.x_train
    with torch.no_grad():
        probs = torch.softmax(models.marked(torch.from_numpy(x)), 1).numpy()
    served = marker(Client("c_alice", "alice", "2026-01-01T00:00:00.000000Z"), x, Answers(probs.argmax(1), probs))
    marker(Client("c_bob", "bob", "2026-01-01T00:00:00.000000Z"), x[:700], Answers(probs[:700].argmax(1), probs[:700]))
    clone = tm.build_model("small_cnn", models.data.input_shape, 10, seed=5)  # alice's label-only clone
    tm.fit(clone, tm.to_tensor_dataset(x, served.labels), epochs=40, seed=5)
    return Owned(models.key, models.marked, scheme, acme.eval(), store, clone.eval())


@pytest.fixture(scope="session")
def independents(models) -> list[nn.Module]:
    """Digits models trained without any of the owner's secrets: the session's LeNet, a small CNN and an MLP."""
    made = [models.independent]
    for arch, seed in (("small_cnn", 3), ("mlp", 4)):
        model = tm.build_model(arch, models.data.input_shape, 10, seed=seed)
        tm.fit(model, tm.to_tensor_dataset(models.data.x_train, models.data.y_train), epochs=10, seed=seed)
        made.append(model.eval())
    return made


def random_labels(seed: int) -> CallableTarget:
    """A target answering uniformly random labels (seeded)."""
    rng = np.random.default_rng(seed)
    return CallableTarget(lambda x: rng.integers(0, 10, len(x)), f"random labels #{seed}", (1, 8, 8), 10)


def random_scores(seed: int) -> CallableTarget:
    """A target answering random probability rows (seeded)."""
    rng = np.random.default_rng(seed)
    return CallableTarget(lambda x: rng.dirichlet(np.ones(10), len(x)), f"random scores #{seed}", (1, 8, 8), 10)


def perturbed(base: nn.Module, seed: int, scale: float = 0.01) -> TorchTarget:
    """``base`` with seeded Gaussian noise (``scale`` times each tensor's RMS) on every weight: derived from the base,
    not from any customer's copy."""
    model = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * p.pow(2).mean().sqrt() * torch.randn(p.shape, generator=gen))
    return TorchTarget(model.eval(), f"base + noise #{seed}")


def save_all(owned: Owned, independent: nn.Module, directory: Path) -> Path:
    """The owner's files for the CLI: key, base, customer copy, clone, an independent model and a registry."""
    from tracemark.fingerprint import Registry
    from tracemark.ledger import file_sha256

    owned.key.save(directory / "master.key")
    for name, model in (("base", owned.base), ("acme", owned.customer_copy), ("clone", owned.clone),
                        ("independent", independent)):
        tm.save_model(model, directory / f"{name}.safetensors")
    registry = Registry.create(directory / "registry.sqlite", owned.scheme)
    for customer in CUSTOMERS:
        registry.add(owned.scheme, customer)
    registry.set_base(file_sha256(directory / "base.safetensors"))
    return directory
