"""Small real HTTP servers for tests: any ASGI app on 127.0.0.1, and a prediction API.

``serve_app(app)`` runs an app with uvicorn in a background thread on an ephemeral port and
yields its base URL. ``prediction_app(predict_fn, num_classes=...)`` builds a FastAPI app whose
endpoints (all ``POST``, body ``{"inputs": [...]}`` unless noted) are:

* ``/predict`` – ``{"labels": [...], "probabilities": [...]}``; every ``flaky_every``-th call
  answers 503 when ``flaky_every`` is set;
* ``/flaky`` – 500 for the first ``fail_first`` calls, then like ``/predict``;
* ``/busy`` – 429 with ``Retry-After: retry_after`` on the first call, then like ``/predict``;
* ``/slow`` – sleeps ``slow_seconds`` before answering like ``/predict``;
* ``/text`` – 200 with a plain-text (non-JSON) body;
* ``/custom`` – someone else's API: body ``{"data": {"instances": [flat inputs]}}``, answer
  ``{"result": {"scores": [logits], "items": [{"label": l}]}}``.

With ``api_key`` set, every endpoint requires ``Authorization: Bearer <api_key>`` (else 401).
``app.state.hits`` counts calls per path (including refused ones); ``app.state.bodies`` keeps
every raw request body.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse


@contextmanager
def serve_app(app: Any, *, startup_timeout: float = 10.0, lifespan: str = "off") -> Iterator[str]:
    """Serve an ASGI app on 127.0.0.1 (ephemeral port) in a thread; yield ``http://127.0.0.1:PORT``.
    ``lifespan="on"`` runs the app's start-up and shut-down handlers, as ``tracemark serve`` does."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan=lifespan, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"test server did not start within {startup_timeout} s")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


def free_port() -> int:
    """A 127.0.0.1 port that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _softmax(out: np.ndarray) -> np.ndarray:
    """``out`` if its rows are already probabilities, else its softmax (treated as logits)."""
    if (out >= 0).all() and np.allclose(out.sum(axis=1), 1.0, atol=1e-3):
        return out
    exp = np.exp(out - out.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def prediction_app(
    predict_fn: Callable[[np.ndarray], np.ndarray],
    *,
    num_classes: int,
    input_shape: tuple[int, ...] | None = None,
    flaky_every: int | None = None,
    fail_first: int = 0,
    retry_after: int = 1,
    slow_seconds: float = 1.0,
    api_key: str | None = None,
) -> FastAPI:
    """A FastAPI prediction API around ``predict_fn`` (float32 batch → logits or probabilities).

    ``input_shape`` un-flattens ``/custom`` inputs (left flat when ``None``).
    """
    app = FastAPI()
    app.state.hits = Counter()
    app.state.bodies = []

    def outputs(x: Any) -> np.ndarray:
        out = np.asarray(predict_fn(np.asarray(x, dtype=np.float32)), dtype=np.float64)
        if out.ndim != 2 or out.shape[1] != num_classes:
            raise ValueError(f"predict_fn returned shape {out.shape}, expected (N, {num_classes})")
        return out

    def answer(x: Any) -> dict[str, Any]:
        probs = _softmax(outputs(x))
        return {"labels": probs.argmax(axis=1).tolist(), "probabilities": probs.tolist()}

    @app.middleware("http")
    async def count_and_authorise(request: Request, call_next: Callable[[Request], Any]) -> Response:
        app.state.hits[request.url.path] += 1
        app.state.bodies.append(await request.body())
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            return JSONResponse({"detail": "invalid API key"}, status_code=401)
        return await call_next(request)

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        if flaky_every and app.state.hits["/predict"] % flaky_every == 0:
            return JSONResponse({"detail": "flaky"}, status_code=503)
        return JSONResponse(answer((await request.json())["inputs"]))

    @app.post("/flaky")
    async def flaky(request: Request) -> Response:
        if app.state.hits["/flaky"] <= fail_first:
            return PlainTextResponse("internal error", status_code=500)
        return JSONResponse(answer((await request.json())["inputs"]))

    @app.post("/busy")
    async def busy(request: Request) -> Response:
        if app.state.hits["/busy"] == 1:
            return JSONResponse({"detail": "slow down"}, status_code=429, headers={"Retry-After": str(retry_after)})
        return JSONResponse(answer((await request.json())["inputs"]))

    @app.post("/slow")
    async def slow(request: Request) -> Response:
        await asyncio.sleep(slow_seconds)
        return JSONResponse(answer((await request.json())["inputs"]))

    @app.post("/text")
    async def text() -> Response:
        return PlainTextResponse("<html>this is not JSON</html>")

    @app.post("/custom")
    async def custom(request: Request) -> Response:
        x = np.asarray((await request.json())["data"]["instances"], dtype=np.float32)
        if input_shape is not None:
            x = x.reshape(len(x), *input_shape)
        out = outputs(x)
        items = [{"label": int(label)} for label in out.argmax(axis=1)]
        return JSONResponse({"result": {"scores": out.tolist(), "items": items}})

    return app
