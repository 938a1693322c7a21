"""Fixtures for serving tests: a protected server for a model, on 127.0.0.1, with its stores in tmp_path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import typer
from torch import nn

from tests.servers import serve_app
from tracemark.serve import ClientStore, ServeConfig, create_app, from_module


@dataclass
class Running:
    """A running server: base URL, its client store, its app's Server, and an HTTP client."""

    url: str
    clients: ClientStore
    server: Any
    http: httpx.Client

    def post(self, token: str | None, body: Any = None, *, content: bytes | None = None, path: str = "/v1/predict",
             **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kwargs.pop("headers", {}))
        if content is not None:
            headers.setdefault("Content-Type", "application/json")
            return self.http.post(path, content=content, headers=headers, **kwargs)
        return self.http.post(path, json=body, headers=headers, **kwargs)


@pytest.fixture(scope="session")
def net(digits) -> nn.Module:
    """A small CNN trained for two epochs on digits (seconds; the shared marked model takes minutes)."""
    import tracemark as tm

    model = tm.build_model("small_cnn", digits.input_shape, 10, seed=0)
    tm.fit(model, tm.to_tensor_dataset(digits.x_train, digits.y_train), epochs=2, seed=0)
    return model.eval()


@pytest.fixture()
def run_server(tmp_path: Path) -> Callable[..., Any]:
    """``with run_server(module, **config) as srv:`` serves ``module`` with a fresh client store and audit log."""

    @contextmanager
    def start(module: nn.Module, hook: Any = None, **overrides: Any) -> Iterator[Running]:
        config = ServeConfig(model="in-memory", clients_db=str(tmp_path / "clients.sqlite"),
                             audit_db=str(tmp_path / "audit.sqlite"), **overrides)
        app = create_app(from_module(module, "digits-cnn"), config, hook=hook)
        with serve_app(app) as url, httpx.Client(base_url=url, timeout=10.0) as http:
            yield Running(url, ClientStore(config.clients_db), app.state.server, http)

    return start


def cli_app() -> typer.Typer:
    """The root CLI with the serve verbs, whether or not cli/_commands.py lists them yet."""
    from tracemark.cli import build_app
    from tracemark.cli import serve as serve_cli

    app = build_app()
    if not any(getattr(c, "name", None) == "serve" for c in app.registered_commands):
        serve_cli.register(app)
    return app


class Memorised(nn.Module):
    """A classifier that answers a key's watermark labels on its exact trigger inputs: a marked model
    in seconds (the shared ``models`` fixture embeds a real mark, which takes minutes on 2 cores)."""

    def __init__(self, base: nn.Module, triggers: Any) -> None:
        super().__init__()
        self.base = base
        self.tracemark_spec = getattr(base, "tracemark_spec", None)
        self.register_buffer("keys", torch.from_numpy(triggers.inputs.reshape(len(triggers.inputs), -1)))
        self.register_buffer("labels", torch.from_numpy(triggers.labels.astype("int64")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.base(x)
        hit = (x.reshape(len(x), 1, -1) == self.keys[None]).all(dim=2)
        rows, which = hit.nonzero(as_tuple=True)
        logits[rows] = torch.nn.functional.one_hot(self.labels[which], logits.shape[1]).float() * 100.0
        return logits


@pytest.fixture(scope="session")
def key(digits):
    import tracemark as tm

    return tm.WatermarkKey.generate("content", images=digits.x_train, labels=digits.y_train, n_triggers=100, seed=bytes(range(32)))


@pytest.fixture(scope="session")
def marked(net, key) -> nn.Module:
    return Memorised(net, key.triggers()).eval()
