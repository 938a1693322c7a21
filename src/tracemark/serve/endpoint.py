"""``POST /v1/predict`` as a plain ASGI endpoint, and the pieces of HTTP it needs.

The predict path is the one every query takes, so it skips FastAPI's middleware stack, routing, dependency
solving and request/response objects: on a 2-core machine they cost over 0.1 ms of CPU a request, more than
every protection step together (key check, input checks, rate limit, policy, audit). :class:`ProtectedAPI`
hands ``/v1/predict`` to its :class:`Guard`-wrapped :class:`PredictEndpoint`; every other route stays a FastAPI
route behind the same :class:`Guard`. The endpoint's OpenAPI entry is added to the app's schema by hand
(``app.py``), so ``/docs`` and schema-driven tests still see it.

The work of a request (checks, model, audit) runs in a :func:`predict_pool` of a few threads, by default as
many as fill the worker's CPUs (CPUs ÷ torch threads per call), not in anyio's pool of 40: more threads than
cores only contend for the GIL (a sub-millisecond model's requests took ~10% longer at 4 connections), and
``loop.run_in_executor`` costs less per call than anyio's thread hand-off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tracemark.serve.errors import PayloadTooLargeError, ServeError
from tracemark.serve.metrics import Metrics

PREDICT_PATH = "/v1/predict"
ROUTES = (PREDICT_PATH, "/v1/predict/image", "/v1/model", "/healthz", "/metrics", "/docs", "/redoc", "/openapi.json")
"""Paths /metrics reports by name (any other path is counted as ``other``)."""

LOG = logging.getLogger("tracemark.serve")
Admit = Callable[[list[tuple[bytes, bytes]]], Any]
"""Admits a request from its headers (API key, content type) before its body is read: returns what ``work`` needs to
answer it (the client, the body's kind) or raises :class:`ServeError`."""
PredictWork = Callable[[Any, bytes], dict[str, Any]]
"""Answers one admitted predict request from what ``admit`` returned and its raw body; raises :class:`ServeError`."""


def default_predict_threads(threads_per_call: int = 1) -> int:
    """Predict calls that fill this process's CPUs (its affinity mask where the OS has one) without
    oversubscribing them, when each call runs on ``threads_per_call`` threads (torch's intra-op threads)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // max(1, threads_per_call))


def predict_pool(threads: int | None = None) -> ThreadPoolExecutor:
    """The threads that answer predict requests: at most ``threads`` (default: one per CPU) at once, the rest queue."""
    return ThreadPoolExecutor(threads or default_predict_threads(), thread_name_prefix="tracemark-predict")


def api_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The API key of a request: ``Authorization: Bearer <key>``, else ``X-API-Key``; ``None`` if neither
    (another ``Authorization`` scheme counts as no key)."""
    api_key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
        if name == b"x-api-key" and api_key is None:
            api_key = value.decode("latin-1")
    return api_key


DRAIN_BYTES = 64 << 10
"""A request refused before its body is read has a body up to this size (64 KiB, by ``Content-Length``) read and
dropped, so its connection stays usable; a larger or unsized one is answered with ``Connection: close`` and never read."""


def body_too_large_to_drain(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a refused request's body is larger than :data:`DRAIN_BYTES` (or of unknown size, e.g. chunked)."""
    length = next((value for name, value in headers if name == b"content-length"), None)
    if length is None:
        return any(name == b"transfer-encoding" for name, _ in headers)
    return not length.isdigit() or int(length) > DRAIN_BYTES


async def drain_body(receive: Receive) -> None:
    """Read and drop what is left of a request's body (a refused one, at most :data:`DRAIN_BYTES`)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return


def error_response(exc: ServeError, metrics: Metrics, *, unread_body: bool = False) -> JSONResponse:
    """The JSON answer to a refused request (``{"detail": ...}`` with the error's status), counted by reason.

    ``unread_body``: refused before its large body was read; the connection is then closed after the answer, so the
    server never receives (or parses) a body it has already refused. (Closing with a small body unread could make
    the client's kernel see a reset before the answer, so small bodies are drained instead: :func:`drain_body`.)"""
    metrics.count("tracemark_requests_refused_total", reason=type(exc).__name__)
    headers = {"Connection": "close"} if unread_body else {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, int(np.ceil(retry_after))))
    return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=headers)


class ClientGone(Exception):
    """The client disconnected (or its connection was closed for missing a read deadline) before its body arrived."""


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _send_json(send: Send, status: int, content: Any, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """Send ``content`` as JSON, encoded as Starlette's ``JSONResponse`` does."""
    body = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json"), *headers]})
    await send({"type": "http.response.body", "body": body})


class PredictEndpoint:
    """``POST /v1/predict``: ``admit`` the request from its headers (on the event loop, before the body is read), read the
    body, answer it with ``work`` on one of ``pool``'s threads (the model must not stall the event loop), send the JSON
    answer or the refusal; other methods get 405, an unexpected error 500 (logged)."""

    def __init__(self, admit: Admit, work: PredictWork, metrics: Metrics, pool: Executor) -> None:
        self.admit, self.work, self.metrics, self.pool = admit, work, metrics, pool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await _send_json(send, 405, {"detail": "Method Not Allowed"}, ((b"allow", b"POST"),))
            return
        try:
            client = self.admit(scope["headers"])
        except ServeError as exc:
            large = body_too_large_to_drain(scope["headers"])
            if not large:
                await drain_body(receive)
            await error_response(exc, self.metrics, unread_body=large)(scope, receive, send)
            return
        try:
            body = await _read_body(receive)
            answer = await asyncio.get_running_loop().run_in_executor(self.pool, self.work, client, body)
        except ClientGone:
            return  # nothing half-read is answered, nobody is left to answer
        except ServeError as exc:
            await error_response(exc, self.metrics)(scope, receive, send)
            return
        except Exception:
            LOG.exception("predict request failed")
            await _send_json(send, 500, {"detail": "Internal Server Error"})
            return
        await _send_json(send, 200, answer)


class Guard:
    """ASGI middleware: refuses bodies over ``max_bytes`` (413) and times every request for /metrics."""

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics) -> None:
        self.app, self.max_bytes, self.metrics = app, max_bytes, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, path = time.perf_counter(), scope["path"] if scope["path"] in ROUTES else "other"
        status = [500]

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        length = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            error = PayloadTooLargeError(f"request body of {length.decode(errors='replace')} bytes; at most {self.max_bytes} are accepted")
            await error_response(error, self.metrics, unread_body=True)(scope, receive, send_and_note)
        else:
            received = 0

            async def limited() -> Message:
                nonlocal received
                message = await receive()
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLargeError(f"request body exceeds {self.max_bytes} bytes")
                return message

            await self.app(scope, limited, send_and_note)
        self.metrics.count("tracemark_http_requests_total", path=path, status=str(status[0]))
        self.metrics.observe(path, time.perf_counter() - start)


class ProtectedAPI(FastAPI):
    """A FastAPI app that answers ``/v1/predict`` with ``predict`` (a plain ASGI app: the :class:`Guard`-wrapped
    :class:`PredictEndpoint`) before FastAPI's own middleware and routing; every other request goes to FastAPI."""

    predict: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.predict is not None and scope["type"] == "http" and scope["path"] == PREDICT_PATH:
            scope["app"] = self
            await self.predict(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


__all__ = ["DRAIN_BYTES", "Guard", "PredictEndpoint", "body_too_large_to_drain", "drain_body", "ProtectedAPI", "api_token", "default_predict_threads", "error_response", "predict_pool",
           "PREDICT_PATH", "ROUTES"]
