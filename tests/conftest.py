"""Shared fixtures: the digits data, a trained base model, a key, a marked copy, an independent model.

Models are trained once per test session (a few seconds on digits) and deep-copied by tests
that change them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import tracemark as tm
from tests.ledger._tsa import Authority, LocalTSA, make_authority

# Small models train faster on one thread, and far faster when other work shares the 2 cores
# (OpenMP threads spin against each other).
torch.set_num_threads(1)


@dataclass
class Models:
    data: tm.ImageData
    key: tm.WatermarkKey
    base: nn.Module
    marked: nn.Module
    independent: nn.Module
    embed_report: tm.EmbedReport


@pytest.fixture(scope="session")
def digits() -> tm.ImageData:
    return tm.load_dataset("digits")


@pytest.fixture(scope="session")
def models(digits: tm.ImageData) -> Models:
    torch.manual_seed(0)
    base = tm.build_model("small_cnn", digits.input_shape, 10, seed=0)
    tm.fit(base, tm.to_tensor_dataset(digits.x_train, digits.y_train), epochs=15, seed=0)
    key = tm.WatermarkKey.generate("content", images=digits.x_train, labels=digits.y_train, n_triggers=100, seed=bytes(range(32)))
    marked = copy.deepcopy(base)
    report = tm.embed(marked, key, digits, seed=0, max_clean_drop=0.01)
    independent = tm.build_model("lenet", digits.input_shape, 10, seed=1)
    tm.fit(independent, tm.to_tensor_dataset(digits.x_train, digits.y_train), epochs=15, seed=1)
    return Models(digits, key, base, marked, independent, report)


@pytest.fixture(autouse=True, scope="session")
def _isolated_state_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Ledger high-water marks go to a temporary state directory, not the user's ~/.local/state."""
    import os

    os.environ.setdefault("TRACEMARK_STATE_DIR", str(tmp_path_factory.mktemp("state")))


@pytest.fixture(scope="session")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    """A local RFC 3161 time-stamping authority's keys and certificates (OpenSSL ``ts``)."""
    return make_authority(tmp_path_factory.mktemp("tsa"))


@pytest.fixture(scope="session")
def tsa(authority: Authority) -> Iterator[LocalTSA]:
    """That authority answering over HTTP on 127.0.0.1."""
    with LocalTSA(authority) as server:
        yield server
