"""Fixtures for extraction tests: a digits victim served on loopback with response marking and the monitor."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from torch import nn

from tests.servers import serve_app
from tracemark.extraction import MarkingSecret, ResponseStore
from tracemark.serve import ClientStore, ServeConfig, create_app, from_module


@pytest.fixture(scope="session")
def victim(digits) -> nn.Module:
    """A small CNN trained on digits (a few seconds)."""
    import tracemark as tm

    model = tm.build_model("small_cnn", digits.input_shape, 10, seed=0)
    tm.fit(model, tm.to_tensor_dataset(digits.x_train, digits.y_train), epochs=8, seed=0)
    return model.eval()


@dataclass
class Served:
    """A running marked server: its URL, stores, config, and the app's Server object."""

    url: str
    clients: ClientStore
    responses: ResponseStore
    config: ServeConfig
    server: Any

    def add(self, name: str, **kwargs: Any) -> tuple[Any, str]:
        issued = self.clients.add(name, **kwargs)
        return issued.client, issued.token


@pytest.fixture()
def secret_file(tmp_path: Path) -> Path:
    return MarkingSecret(bytes(range(32))).save(tmp_path / "marking.secret")


@pytest.fixture()
def serve_marked(tmp_path: Path, secret_file: Path) -> Callable[..., Any]:
    """``with serve_marked(module, **config) as s:`` — marking on (secret from a 0600 file), no rate limit to speak of,
    and the marking budget out of the way (cap 0.5) unless a test sets ``marking_cap``."""

    @contextmanager
    def start(module: nn.Module, **overrides: Any) -> Iterator[Served]:
        settings = dict(model="in-memory", clients_db=str(tmp_path / "clients.sqlite"), audit_db=str(tmp_path / "audit.sqlite"),
                        responses_db=str(tmp_path / "responses.sqlite"), marking=True, marking_secret=str(secret_file),
                        rate=1e6, burst=1e6, marking_cap=0.5)
        settings.update(overrides)
        config = ServeConfig(**settings)
        app = create_app(from_module(module, "digits-cnn"), config)
        with serve_app(app) as url:
            yield Served(url, ClientStore(config.clients_db), ResponseStore(config.responses_db), config, app.state.server)

    return start
