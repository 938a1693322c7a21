"""The FastAPI application: authenticated, rate-limited, size- and shape-checked, policy-limited, audited.

``create_app(model, config)`` builds it; ``app_from_env()`` is the factory uvicorn workers call.
Routes: ``POST /v1/predict`` (a JSON, ``.npy`` or raw-bytes batch; a plain ASGI endpoint, :mod:`~tracemark.serve.endpoint`),
``POST /v1/predict/image`` (multipart upload),
``GET /v1/model`` (public description), ``GET /healthz``, ``GET /metrics`` (detail for the admin token only),
``/docs`` and ``/redoc`` (assets served locally), ``/openapi.json``.

A request is admitted before any costly work: its body size is checked (:class:`~tracemark.serve.endpoint.Guard`),
its key authenticated, and the inputs it holds, counted from the raw bytes, charged to the client's bucket
(:meth:`Server.admit`); only then is it parsed or are its images decoded (within the decode bounds of
:class:`~tracemark.trust.requests.ImageBounds`). The exact count is settled after parsing (:meth:`Server.answer`).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from tracemark.package.licence import OutputPolicy
from tracemark.serve.audit import AuditLog
from tracemark.serve.clients import Client, ClientStore
from tracemark.serve.config import ENV_CONFIG, ServeConfig
from tracemark.serve.endpoint import (PREDICT_PATH, Guard, PredictEndpoint, ProtectedAPI, api_token, body_too_large_to_drain, default_predict_threads,
                                      drain_body, error_response, predict_pool)
from tracemark.serve.docs import add_offline_docs
from tracemark.serve.errors import AdminTokenError, AuditWriteError, InvalidInputError, LicenceExpiredError, ServeConfigError, ServeError
from tracemark.serve.hooks import AnswerHook, admit, close
from tracemark.serve.metrics import CONTENT_TYPE, Metrics
from tracemark.serve.model import ServedModel
from tracemark.serve.policy import effective_policy, render
from tracemark.serve.ratelimit import Allowance, Limiter, MemoryLimiter, SqliteLimiter, check_cost
from tracemark.serve.validation import (BODY_TYPES, InputSpec, TensorHead, body_kind, check_batch_size, decode_images, npy_head,
                                        parse_json_inputs, raw_head, tensor_inputs)
from tracemark.trust.requests import COUNT_JSON_ABOVE, TENSOR_DTYPES, ImageBounds, count_json_inputs, count_multipart_parts, multipart_boundary
from tracemark.targets.base import Answers

Headers = list[tuple[bytes, bytes]]


def _header(headers: Headers, name: bytes) -> str | None:
    return next((value.decode("latin-1") for key, value in headers if key == name), None)


@dataclass(frozen=True)
class Admitted:
    """A predict request let in before its body is read: its client, body kind (``json``, ``npy``, ``raw``), the queries
    charged so far and, for a raw body, the tensor its headers describe."""

    client: Client
    kind: str = "json"
    charged: int = 1
    head: TensorHead | None = None


class RequestIds:
    """Request ids unique across a server's workers and restarts: a random 48-bit prefix per instance, then a counter
    (cheaper on the request path than random bytes from the kernel)."""

    def __init__(self) -> None:
        self._prefix, self._seq = secrets.token_hex(6), itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._seq):08x}"


@dataclass
class Server:
    """The protected predict path, independent of HTTP: authenticate, check, limit, answer, audit."""

    model: ServedModel
    spec: InputSpec
    clients: ClientStore
    audit: AuditLog
    limiter: Limiter
    default_policy: OutputPolicy | None
    allowance: Allowance
    metrics: Metrics
    hook: AnswerHook | None = None
    request_id: RequestIds = field(default_factory=RequestIds)
    image_bounds: ImageBounds = field(default_factory=ImageBounds)

    @property
    def ceiling(self) -> OutputPolicy | None:
        """The most a package licence lets any client see (``None`` for a plain model)."""
        return self.model.licence.output_policy if self.model.licence else None

    def policy_for(self, client: Client) -> OutputPolicy:
        """The output policy a client gets: its own or the default, capped by the licence."""
        default = self.default_policy or self.ceiling or OutputPolicy("label")
        return effective_policy(client.policy, default, self.ceiling)

    def authenticate(self, token: str | None) -> Client:
        """The active client holding ``token`` (401/403 errors otherwise); refuses all after licence expiry."""
        client = self.clients.authenticate(token)
        if self.model.licence_expired():
            raise LicenceExpiredError("the licence of the served package has expired; ask the vendor to renew it")
        return client

    def allowance_for(self, client: Client) -> Allowance:
        """The client's own rate and burst, else the server default."""
        return Allowance(client.rate, client.burst) if client.rate is not None and client.burst is not None else self.allowance

    def charge(self, client: Client, n: int) -> None:
        """Charge ``n`` queries to the client's bucket, then to the hooks' admission checks (e.g. the monitor's throttle)."""
        self.limiter.charge(client.id, n, self.allowance_for(client))
        if self.hook is not None:
            admit(self.hook, client, n)

    def admit_head(self, token: str | None) -> Client:
        """Before a request's body is read: authenticate ``token`` and charge the request's first query, so that a client
        over its rate is refused (429) without its body being read, and every request, even a refused one, costs one."""
        client = self.authenticate(token)
        self.charge(client, 1)
        return client

    def admit(self, client: Client, n: int) -> int:
        """Before a body is parsed or decoded: refuse a count of ``n`` inputs (from the raw bytes) over the maximum batch
        or the client's burst, else charge the rest of it (:meth:`admit_head` charged one). Returns the charge."""
        if n > self.spec.max_batch:
            check_batch_size(n, self.spec)
        cost = max(1, n)
        if cost > 1:
            check_cost(cost, self.allowance_for(client))
            self.charge(client, cost - 1)
        return cost

    def answer(self, client: Client, x: np.ndarray, charged: int = 0) -> dict[str, Any]:
        """Settle the client's charge to ``len(x)`` queries (``charged`` were charged on admission), run the model,
        apply hook and policy, audit every input, return the body."""
        allowance = self.allowance_for(client)
        if len(x) > charged:
            check_cost(len(x), allowance)
            self.charge(client, len(x) - charged)
        elif len(x) < charged:
            self.limiter.refund(client.id, charged - len(x), allowance)
        probabilities = self.model.probabilities(x)
        answers = Answers(probabilities.argmax(axis=1), probabilities)
        if self.hook is not None:
            answers = self.hook(client, x, answers)
        policy = self.policy_for(client)
        body, per_input = render(np.asarray(answers.labels), np.asarray(answers.probabilities), policy)
        request_id = self.request_id()
        try:
            self.audit.record(client, request_id, x, per_input, str(policy))
        except (sqlite3.Error, OSError) as exc:
            raise AuditWriteError(f"the audit log cannot record this query ({exc}); it was not answered") from exc
        self.metrics.count("tracemark_queries_answered_total", len(x), client=client.name)
        return {"request_id": request_id, "model": self.model.model_id, "policy": policy.to_dict(), **body}

    def admit_predict(self, headers: Headers) -> Admitted:
        """Before a ``POST /v1/predict`` body is read: :meth:`admit_head`, then its ``Content-Type`` (415 if not read here);
        a raw body's shape and dtype come from its headers, so its whole input count is charged now."""
        client = self.admit_head(api_token(headers))
        kind = body_kind(_header(headers, b"content-type"))
        if kind != "raw":
            return Admitted(client, kind)
        head = raw_head(_header(headers, b"x-tracemark-shape"), _header(headers, b"x-tracemark-dtype"))
        return Admitted(client, kind, self.admit(client, head.count), head)

    def predict(self, admitted: Admitted, body: bytes) -> dict[str, Any]:
        """Answer an admitted ``POST /v1/predict``: a JSON body by :meth:`predict_json`; a ``.npy`` one has its input count
        (from its header) charged before its values are read; then the tensor is checked and answered."""
        if admitted.kind == "json":
            return self.predict_json(admitted.client, body)
        head, charged = admitted.head, admitted.charged
        if head is None:
            head = npy_head(body)
            charged = self.admit(admitted.client, head.count)
        return self.answer(admitted.client, tensor_inputs(body, head, self.spec), charged)

    def predict_json(self, client: Client, body: bytes) -> dict[str, Any]:
        """One ``POST /v1/predict`` of an admitted client: charge the inputs counted in the raw ``body``, then parse
        and check it, and answer it."""
        counted = count_json_inputs(body) if len(body) > COUNT_JSON_ABOVE else 1  # a small body costs less to parse than to count
        charged = self.admit(client, counted)
        return self.answer(client, parse_json_inputs(body, self.spec), charged)

    def decode(self, files: list[tuple[str, bytes]]) -> np.ndarray:
        """Uploaded images as a batch, within the decode bounds (counted in /metrics)."""
        x = decode_images(files, self.spec, self.image_bounds)
        self.metrics.count("tracemark_images_decoded_total", len(x))
        return x


def _json_body(spec: InputSpec) -> dict[str, Any]:
    """The request schema for ``spec``: nested C×H×W or flat inputs, numbers in the allowed range."""
    number: dict[str, Any] = {"type": "number"}
    if spec.value_range is not None:
        number.update(minimum=spec.value_range[0], maximum=spec.value_range[1])
    nested = number
    for dim in reversed(spec.input_shape):
        nested = {"type": "array", "minItems": dim, "maxItems": dim, "items": nested}
    flat = {"type": "array", "minItems": spec.size, "maxItems": spec.size, "items": number}
    inputs = {"type": "array", "minItems": 1, "maxItems": spec.max_batch, "items": {"anyOf": [nested, flat]},
              "description": f"1 to {spec.max_batch} inputs, each nested {list(spec.input_shape)} or flat [{spec.size}]."}
    return {"type": "object", "required": ["inputs"], "additionalProperties": False, "properties": {"inputs": inputs}}


_IMAGE_BODY = {
    "type": "object",
    "required": ["image"],
    "properties": {"image": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "PNG/JPEG images"}},
}
_ANSWER = {
    "type": "object",
    "required": ["request_id", "model", "policy", "labels"],
    "properties": {
        "request_id": {"type": "string"},
        "model": {"type": "string"},
        "policy": {"type": "object"},
        "labels": {"type": "array", "items": {"type": "integer"}},
        "top_k": {"type": "array", "items": {"type": "object"}},
        "probabilities": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
    },
}
_ERROR = {"type": "object", "properties": {"detail": {"type": "string"}}}
_TENSOR_NOTE = ("shape (N, C, H, W) or (N, C*H*W); float32, float16, float64, or uint8 (0..255 pixels, scaled to [0, 1]); "
                "values then checked like JSON ones")
_NPY_BODY = {"type": "string", "format": "binary", "description": f"A .npy file (numpy.save, format 1.0 or 2.0) of {_TENSOR_NOTE}; "
             "object arrays are refused."}
_RAW_BODY = {"type": "string", "format": "binary", "description": "Raw little-endian values in C order, described by the "
             "headers X-Tracemark-Shape: N,C,H,W (or N,C*H*W) and X-Tracemark-Dtype: float32 (default), float16, float64 or "
             f"uint8; {_TENSOR_NOTE}; the body is exactly N*C*H*W*itemsize bytes."}


def _predict_docs(bodies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    refusals = {"401": "no or unknown API key", "403": "revoked API key", "413": "body too large",
                **({"415": "Content-Type not read here"} if len(bodies) > 1 else {}),
                "422": "malformed input (the message names the problem)", "429": "rate limit; see Retry-After",
                "503": "licence expired or audit log unavailable"}
    responses: dict[str, Any] = {"200": {"description": "answers", "content": {"application/json": {"schema": _ANSWER}}}}
    responses.update({code: {"description": text, "content": {"application/json": {"schema": _ERROR}}} for code, text in refusals.items()})
    return {"requestBody": {"required": True, "content": {kind: {"schema": schema} for kind, schema in bodies.items()}},
            "responses": responses,
            "security": [{"bearer": []}, {"apiKey": []}]}


def _predict_operation(spec: InputSpec) -> dict[str, Any]:
    """The OpenAPI operation of ``POST /v1/predict`` (served by :class:`~tracemark.serve.endpoint.PredictEndpoint`,
    not a FastAPI route)."""
    return {"summary": "Predict", "operationId": "predict_v1_predict_post",
            "description": "Classify a batch of inputs sent as JSON ``{\"inputs\": [...]}``, as a .npy file "
                           "(``application/x-npy``), or as raw bytes (``application/octet-stream`` with ``X-Tracemark-Shape``).",
            **_predict_docs({"application/json": _json_body(spec), "application/x-npy": _NPY_BODY, "application/octet-stream": _RAW_BODY})}


def _extraction_hook(config: ServeConfig) -> AnswerHook | None:
    """Response marking and the stealing monitor, when ``config`` turns them on."""
    if not config.marking and config.monitor is None:
        return None
    from tracemark.extraction.serving import hook_from_config

    return hook_from_config(config)


def create_app(
    model: ServedModel,
    config: ServeConfig,
    *,
    clients: ClientStore | None = None,
    audit: AuditLog | None = None,
    limiter: Limiter | None = None,
    hook: AnswerHook | None = None,
) -> ProtectedAPI:
    """The protected prediction API for ``model`` under ``config`` (stores opened from its paths unless given)."""
    import torch

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    metrics = Metrics()
    if limiter is None:
        limiter = SqliteLimiter(config.limits_db) if config.limits_shared else MemoryLimiter()
    audit = audit or AuditLog(config.audit_db, config.retention_days, config.audit_sync)
    audit.purge()
    pool = predict_pool(config.predict_threads or default_predict_threads(torch.get_num_threads()))
    server = Server(
        model=model,
        spec=InputSpec(model.input_shape, config.max_batch, config.value_range),
        clients=clients or ClientStore(config.clients_db),
        audit=audit,
        limiter=limiter,
        default_policy=config.default_policy,
        allowance=Allowance(config.rate, config.burst),
        metrics=metrics,
        hook=hook if hook is not None else _extraction_hook(config),
        image_bounds=config.image_bounds,
    )
    admin_token = config.admin_token()
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        pool.shutdown(wait=True)  # requests still running finish their audit rows first
        if server.hook is not None:
            close(server.hook)  # e.g. the response marker's answered counts
        audit.close()  # import the last journaled audit rows

    app = ProtectedAPI(
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        title="tracemark protected prediction API",
        version="1",
        description="Answers classification queries for authorised clients, within their output policy and rate; every query is audited.",
    )
    app.state.server = server

    @app.exception_handler(ServeError)
    async def serve_error(_: Request, exc: ServeError) -> JSONResponse:
        return error_response(exc, metrics)

    @app.post("/v1/predict/image", openapi_extra=_predict_docs({"multipart/form-data": _IMAGE_BODY}), response_class=JSONResponse)
    async def predict_image(request: Request) -> Response:
        """Classify uploaded images (multipart field ``image``, repeatable), resized to the model's input."""
        try:
            client = server.admit_head(api_token(request.scope["headers"]))
        except ServeError as exc:
            large = body_too_large_to_drain(request.scope["headers"])
            if not large:
                await drain_body(request.receive)
            return error_response(exc, metrics, unread_body=large)
        try:
            body = await request.body()
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        boundary = multipart_boundary(request.headers.get("content-type", ""))
        charged = server.admit(client, count_multipart_parts(body, boundary) if boundary else 1)  # other forms hold no files
        try:
            form = await request.form(max_files=server.spec.max_batch, max_fields=server.spec.max_batch)
        except ServeError:
            raise
        except Exception as exc:  # starlette/python-multipart raise several types for broken multipart bodies
            raise InvalidInputError(f"not a readable multipart/form-data body ({exc})") from exc
        uploads = [item for item in form.getlist("image") if isinstance(item, UploadFile)]
        if not uploads:
            raise InvalidInputError("no 'image' file in the form; send -F image=@file.png")
        files = [(item.filename or f"image {i}", await item.read()) for i, item in enumerate(uploads)]
        await form.close()
        answer = await asyncio.get_running_loop().run_in_executor(pool, lambda: server.answer(client, server.decode(files), charged))
        return JSONResponse(answer)

    @app.get("/v1/model")
    async def describe() -> dict[str, Any]:
        """Public description of the served model: shape, classes, limits. No weights, no keys."""
        default = server.default_policy or server.ceiling or OutputPolicy("label")
        return {**model.describe(), **server.spec.to_dict(), "max_body_bytes": config.max_body_bytes,
                "content_types": list(BODY_TYPES), "tensor_dtypes": list(TENSOR_DTYPES),
                "default_output": default.to_dict(), "query": "one input of a batch (rate limits and audit count queries)"}

    @app.get("/healthz")
    async def healthz() -> Response:
        """Liveness: the model is loaded, the licence valid, the audit log reachable."""
        try:
            audit.db.connection().execute("SELECT 1").fetchone()
        except sqlite3.Error as exc:
            return JSONResponse({"status": "error", "detail": f"audit log unavailable ({exc})"}, status_code=503)
        if model.licence_expired():
            return JSONResponse({"status": "error", "detail": "licence expired"}, status_code=503)
        return JSONResponse({"status": "ok", "model": model.model_id})

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        """Prometheus metrics of this worker process: aggregate counters, or per client and worker for the admin token."""
        if admin_token is None:
            return PlainTextResponse(metrics.render(detail=False), media_type=CONTENT_TYPE)
        token = api_token(request.scope["headers"]) or ""
        if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), admin_token.encode("utf-8", "surrogateescape")):
            raise AdminTokenError("GET /metrics needs the admin token: send 'Authorization: Bearer <token>' "
                                  "(the server reads it from $TRACEMARK_ADMIN_TOKEN or --admin-token-env)")
        return PlainTextResponse(metrics.render(detail=True), media_type=CONTENT_TYPE)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema["paths"] = {PREDICT_PATH: {"post": _predict_operation(server.spec)}, **schema["paths"]}
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    add_offline_docs(app)
    app.add_middleware(Guard, max_bytes=config.max_body_bytes, metrics=metrics)
    app.predict = Guard(PredictEndpoint(server.admit_predict, server.predict, metrics, pool), config.max_body_bytes, metrics)
    return app


def app_from_env() -> ProtectedAPI:
    """The app described by ``$TRACEMARK_SERVE_CONFIG`` (JSON of :class:`ServeConfig`); each worker opens its own model."""
    text = os.environ.get(ENV_CONFIG)
    if not text:
        raise ServeConfigError(f"{ENV_CONFIG} is not set; start the server with `tracemark serve`")
    config = ServeConfig.from_json(text)
    return create_app(config.load_model(), config)


__all__ = ["create_app", "app_from_env", "Server"]
