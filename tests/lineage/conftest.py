"""A lineage fingerprint of the session's marked digits model, built once on a small pool (about 15 s)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from torch import nn

import tracemark as tm
from tracemark.attacks import FineTune, ThiefData
from tracemark.lineage import GenerationSettings, LineageBuild, PoolPlan, create_lineage, default_plan

SETTINGS = GenerationSettings(n=100, candidates=300, epsilon=0.25, steps=30, seed=0)


def small_plan(seed: int = 0) -> PoolPlan:
    """3 surrogates (fine-tune, extraction into a small CNN and into LeNet), 6 generation and 8 calibration references."""
    return default_plan(seed, epochs=6, surrogates=3, generation_references=6, calibration_references=8)


@dataclass
class Built:
    data: tm.ImageData
    marked: nn.Module
    build: LineageBuild
    pool_dir: Path
    file: Path


@pytest.fixture(scope="session")
def built(models, tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("lineage")
    build = create_lineage(models.marked, models.data, pool_dir=root / "pool", plan=small_plan(), settings=SETTINGS, device="cpu")
    path = build.lineage.save(root / "marked.lineage")
    return Built(models.data, models.marked, build, root / "pool", path)


@pytest.fixture(scope="session")
def fine_tuned(built: Built) -> nn.Module:
    """The thief's fine-tune (all layers, 3 epochs) of the marked model on images no pool member was seeded with."""
    thief = ThiefData(x=built.data.x_train[::2], y=built.data.y_train[::2], seed=11, device="cpu")
    stolen = FineTune("FTAL", n_samples=720, epochs=3, lr=5e-4).run(built.marked, thief)
    assert tm.accuracy(stolen.model, built.data.x_test, built.data.y_test) > 0.9
    return stolen.model


@pytest.fixture(scope="session")
def independent(built: Built) -> nn.Module:
    """A LeNet trained from scratch with its own seed, subset and learning rate: in no pool."""
    model = tm.build_model("lenet", built.data.input_shape, 10, seed=4242)
    tm.fit(model, tm.to_tensor_dataset(built.data.x_train[200:1100], built.data.y_train[200:1100]), epochs=10, lr=2e-3,
           seed=4242, device="cpu")
    assert tm.accuracy(model, built.data.x_test, built.data.y_test) > 0.85
    return model
