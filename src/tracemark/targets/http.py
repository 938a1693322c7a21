"""A remote HTTP prediction API as a :class:`~tracemark.targets.base.Target`.

:class:`HttpTarget` posts inputs as JSON (or, with ``encoding="npy"``, as a ``.npy`` file: float32, a fraction
of JSON's size and parse time for large inputs), in batches, and reads labels (and, when the API
gives them, probabilities) back out of the JSON answer. It retries transient failures with
exponential back-off, honours ``Retry-After``, keeps to a query budget and a request rate,
and records every request attempt in a transcript that can be saved as evidence. A host name that
does not resolve, or a port that refuses connections, fails at once (no retries).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Mapping

import httpx
import numpy as np

from tracemark._util.files import atomic_write_text
from tracemark.errors import (
    ClassCountMismatchError,
    QueryBudgetExceededError,
    ShapeMismatchError,
    TargetNotFoundError,
    TargetResponseError,
    TargetUnreachableError,
)
from tracemark.targets.base import Answers, Target

INPUTS = "{{inputs}}"
"""Template placeholder replaced by the batch as nested lists (N×C×H×W)."""
INPUTS_FLAT = "{{inputs_flat}}"
"""Template placeholder replaced by the batch with each input flattened (N×D)."""
DEFAULT_TEMPLATE: Mapping[str, Any] = {"inputs": INPUTS}
MAX_RETRY_AFTER_S = 60.0
"""Longest ``Retry-After`` wait honoured; longer requests are cut to this."""
ENCODINGS = ("json", "npy")
"""Request body encodings: ``json`` (the request template) or ``npy`` (the batch as a float32 .npy file)."""
NPY_CONTENT_TYPE = "application/x-npy"
TRANSCRIPT_FORMAT = "tracemark-http-transcript"
_BODY_SNIPPET = 200


def inputs_sha256(x: np.ndarray) -> str:
    """SHA-256 of a batch as sent: its little-endian float32 bytes, C order (shape not included)."""
    return hashlib.sha256(np.ascontiguousarray(x, dtype="<f4").tobytes()).hexdigest()


@dataclass(frozen=True)
class QueryRecord:
    """One request attempt: what was sent, when, and what came back."""

    batch_index: int
    attempt: int
    sent_at: str
    elapsed_s: float
    n_inputs: int
    input_sha256: str
    request_sha256: str
    status: int | None
    answer: list[int] | None = None
    error: str | None = None


class HttpTarget(Target):
    """A classifier behind an HTTP endpoint that takes a JSON batch and answers JSON.

    The request body is ``request_template`` with the placeholder string ``"{{inputs}}"``
    (nested lists) or ``"{{inputs_flat}}"`` (one flat list per input) replaced by the batch.
    ``response_field`` is a dotted path into the answer (digits index lists) whose value is a
    list with one entry per input, each either an int label, a score vector (label = argmax),
    or an object with an int ``label`` (and optionally a ``probabilities`` vector).
    ``probabilities_field`` optionally names a separate list of score vectors. Score vectors
    that are not already probabilities (non-negative, rows summing to 1) are softmaxed.

    ``encoding="npy"`` sends each batch as a ``.npy`` file (little-endian float32, ``Content-Type: application/x-npy``)
    instead of the template, for servers that read it (``tracemark serve`` does); use it for large inputs.

    ``max_queries`` counts inputs sent, retries included; ``rate`` is in requests per second.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
        api_key_header: str = "Authorization",
        api_key_prefix: str = "Bearer ",
        request_template: Any = None,
        response_field: str = "labels",
        probabilities_field: str | None = None,
        batch_size: int = 32,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_queries: int | None = None,
        rate: float | None = None,
        num_classes: int | None = None,
        input_shape: tuple[int, ...] | None = None,
        client: httpx.Client | None = None,
        encoding: str = "json",
    ) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, not {encoding!r}")
        if encoding != "json" and request_template is not None:
            raise ValueError(f"request_template shapes JSON bodies; encoding={encoding!r} sends the batch itself")
        template = DEFAULT_TEMPLATE if request_template is None else request_template
        if not _has_placeholder(template):
            raise ValueError(f"request_template must contain {INPUTS!r} or {INPUTS_FLAT!r}")
        if batch_size < 1 or retries < 0 or backoff < 0 or timeout <= 0:
            raise ValueError("batch_size must be >= 1, retries and backoff >= 0, timeout > 0")
        if (max_queries is not None and max_queries < 0) or (rate is not None and rate <= 0):
            raise ValueError("max_queries must be >= 0 and rate > 0")
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise TargetUnreachableError(f"{url!r} is not a valid URL: {exc}") from exc
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise TargetUnreachableError(f"{url!r} is not an http:// or https:// URL with a host")
        self.url = url
        self.description = f"HTTP target {_redact(url)}"
        self.encoding = encoding
        self.headers = {"Content-Type": "application/json" if encoding == "json" else NPY_CONTENT_TYPE, **(headers or {})}
        if api_key is not None:
            self.headers[api_key_header] = f"{api_key_prefix}{api_key}"
        self.request_template = template
        self.response_field = response_field
        self.probabilities_field = probabilities_field
        self.batch_size = batch_size
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_queries = max_queries
        self.rate = rate
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.transcript: list[QueryRecord] = []
        self.queries_used = 0
        self._client = client
        self._owns_client = client is None
        self._batches_sent = 0
        self._next_send = 0.0

    # -- Target --------------------------------------------------------------------------

    def _answer(self, x: np.ndarray) -> Answers:
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise ShapeMismatchError(f"{self.description}: expects inputs {self.input_shape}, got {x.shape[1:]}")
        if not np.isfinite(x).all():
            raise ValueError("inputs contain NaN or infinity" + (", which JSON cannot carry" if self.encoding == "json" else ""))
        self._check_budget(len(x))
        labels: list[np.ndarray] = []
        probs: list[np.ndarray | None] = []
        for start in range(0, len(x), self.batch_size):
            answer = self._send_batch(x[start : start + self.batch_size])
            labels.append(answer.labels)
            probs.append(answer.probabilities)
        if not labels:
            return Answers(np.zeros(0, dtype=np.int64))
        if any(p is None for p in probs):
            return Answers(np.concatenate(labels))
        if len({p.shape[1] for p in probs if p is not None}) > 1:
            raise TargetResponseError(f"{self.description}: batches answered different numbers of class scores")
        return Answers(np.concatenate(labels), np.concatenate(probs))  # type: ignore[arg-type]

    # -- transcript ----------------------------------------------------------------------

    def transcript_dict(self) -> dict[str, Any]:
        """The transcript as JSON-able data (no headers or API key; URL credentials redacted)."""
        return {
            "format": TRANSCRIPT_FORMAT,
            "version": 1,
            "url": _redact(self.url),
            "input_hash": "sha256 of little-endian float32 bytes of the batch, C order",
            "request_template": self.request_template if self.encoding == "json" else None,
            "encoding": self.encoding,
            "response_field": self.response_field,
            "probabilities_field": self.probabilities_field,
            "queries_used": self.queries_used,
            "records": [asdict(r) for r in self.transcript],
        }

    def save_transcript(self, path: str | Path) -> Path:
        """Write :meth:`transcript_dict` as JSON to ``path`` atomically."""
        return atomic_write_text(path, json.dumps(self.transcript_dict(), indent=2) + "\n")

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP client if this target created it."""
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> HttpTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------

    def _check_budget(self, n: int) -> None:
        if self.max_queries is not None and self.queries_used + n > self.max_queries:
            raise QueryBudgetExceededError(
                f"{self.description}: sending {n} more inputs would exceed the budget of "
                f"{self.max_queries} queries ({self.queries_used} used); raise max_queries to continue"
            )

    def _send_batch(self, batch: np.ndarray) -> Answers:
        """Send one batch, retrying transient failures; parse and return its answers."""
        batch_index = self._batches_sent
        self._batches_sent += 1
        body = _npy(batch) if self.encoding == "npy" else json.dumps(_fill(self.request_template, batch), allow_nan=False).encode("utf-8")
        sent = {
            "batch_index": batch_index,
            "n_inputs": len(batch),
            "input_sha256": inputs_sha256(batch),
            "request_sha256": hashlib.sha256(body).hexdigest(),
        }
        client = self._get_client()
        for attempt in range(self.retries + 1):
            tries = f"{attempt + 1} attempt(s)"
            self._check_budget(len(batch))
            self._wait_for_rate()
            start = (datetime.now(timezone.utc).isoformat(), time.monotonic())
            self.queries_used += len(batch)
            try:
                response = client.post(self.url, content=body, headers=self.headers, timeout=self.timeout)
            except httpx.ConnectError as exc:  # name resolution or connection refused: a retry gets the same answer
                reason = _connect_failure(exc)
                self._record(sent, attempt, start, None, error=reason)
                raise TargetNotFoundError(f"{self.description}: {reason} (not retried); check the URL and that the server is up") from exc
            except httpx.TransportError as exc:  # includes time-outs
                if isinstance(exc, httpx.TimeoutException):
                    reason = f"timed out after {self.timeout} s"
                else:
                    reason = f"cannot connect ({type(exc).__name__}: {exc})"
                self._record(sent, attempt, start, None, error=reason)
                if attempt == self.retries:
                    raise TargetUnreachableError(
                        f"{self.description}: {reason} after {tries}; check the URL and that the server is up"
                    ) from exc
                self._sleep_backoff(attempt)
                continue
            status = response.status_code
            error = f"HTTP {status}: {_snippet(response)}"
            if status == 429 or status >= 500:
                self._record(sent, attempt, start, status, error=error)
                if attempt == self.retries:
                    raise TargetResponseError(f"{self.description}: {error} (after {tries})")
                self._sleep_backoff(attempt, response.headers.get("Retry-After"))
                continue
            if not 200 <= status < 300:
                self._record(sent, attempt, start, status, error=error)
                raise TargetResponseError(f"{self.description}: {error} (not retried)")
            try:
                answers = self._parse(response, len(batch))
            except TargetResponseError as exc:
                self._record(sent, attempt, start, status, error=str(exc))
                raise
            self._record(sent, attempt, start, status, answer=answers.labels.tolist())
            return answers
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns or raises

    def _record(
        self,
        sent: dict[str, Any],
        attempt: int,
        start: tuple[str, float],
        status: int | None,
        answer: list[int] | None = None,
        error: str | None = None,
    ) -> None:
        elapsed = round(time.monotonic() - start[1], 6)
        record = QueryRecord(
            attempt=attempt, sent_at=start[0], elapsed_s=elapsed, status=status, answer=answer, error=error, **sent
        )
        self.transcript.append(record)

    def _parse(self, response: httpx.Response, n: int) -> Answers:
        try:
            payload = json.loads(response.content)
        except (ValueError, UnicodeDecodeError) as exc:
            raise TargetResponseError(
                f"{self.description}: answer is not JSON (content-type "
                f"{response.headers.get('content-type', '?')!r}): {_snippet(response)}"
            ) from exc
        labels, probs = _parse_entries(_field(payload, self.response_field, self.description), n, self.description)
        if self.probabilities_field is not None:
            raw = _field(payload, self.probabilities_field, self.description)
            probs = _to_probabilities(_vectors(raw, n, f"{self.description}: {self.probabilities_field!r}"))
        if probs is not None and self.num_classes is not None and probs.shape[1] != self.num_classes:
            raise ClassCountMismatchError(
                f"{self.description}: answered {probs.shape[1]} class scores, expected {self.num_classes}"
            )
        return Answers(labels, probs)

    def _get_client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout)
        return self._client

    def _wait_for_rate(self) -> None:
        if self.rate is None:
            return
        now = time.monotonic()
        if self._next_send > now:
            time.sleep(self._next_send - now)
        self._next_send = max(now, self._next_send) + 1.0 / self.rate

    def _sleep_backoff(self, attempt: int, retry_after: str | None = None) -> None:
        delay = _retry_after_seconds(retry_after)
        time.sleep(self.backoff * 2**attempt if delay is None else delay)


def _connect_failure(exc: httpx.ConnectError) -> str:
    """What a failed connection means: the host name does not resolve, or nothing listens there."""
    import socket

    cause = exc.__cause__ or exc.__context__
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, socket.gaierror):
        return f"the host name does not resolve ({cause.strerror or cause})"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused: nothing listens on that port"
    return f"cannot connect ({exc})"


def _has_placeholder(template: Any) -> bool:
    if isinstance(template, str):
        return template in (INPUTS, INPUTS_FLAT)
    if isinstance(template, Mapping):
        return any(_has_placeholder(v) for v in template.values())
    if isinstance(template, (list, tuple)):
        return any(_has_placeholder(v) for v in template)
    return False


def _fill(template: Any, batch: np.ndarray) -> Any:
    """Copy ``template`` with the placeholders replaced by ``batch``."""
    if template == INPUTS:
        return batch.tolist()
    if template == INPUTS_FLAT:
        return batch.reshape(len(batch), -1).tolist()
    if isinstance(template, Mapping):
        return {k: _fill(v, batch) for k, v in template.items()}
    if isinstance(template, (list, tuple)):
        return [_fill(v, batch) for v in template]
    return template


def _npy(batch: np.ndarray) -> bytes:
    """``batch`` as the bytes of a .npy file of little-endian float32 (what :func:`inputs_sha256` hashes)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(batch, dtype="<f4"), allow_pickle=False)
    return buffer.getvalue()


def _field(payload: Any, path: str, where: str) -> Any:
    """Follow a dotted path (digits index lists) into a JSON value."""
    value = payload
    for part in path.split(".") if path else []:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            keys = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise TargetResponseError(f"{where}: answer has no field {path!r} (stuck at {part!r}; found {keys})")
    return value


def _parse_entries(value: Any, n: int, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (and probabilities, if the entries carry scores) from the response field's value."""
    what = f"{where}: expected a list of {n} labels, score vectors or {{'label': ...}} objects"
    if not isinstance(value, list) or len(value) != n:
        got = f"a list of {len(value)}" if isinstance(value, list) else type(value).__name__
        raise TargetResponseError(f"{what}, got {got}")
    if n == 0:
        return np.zeros(0, dtype=np.int64), None
    if all(isinstance(v, dict) for v in value):
        if not all("label" in v for v in value):
            raise TargetResponseError(f"{what}; an object has no 'label' key")
        labels = np.array([_label(v["label"], what) for v in value], dtype=np.int64)
        if all("probabilities" in v for v in value):
            return labels, _to_probabilities(_vectors([v["probabilities"] for v in value], n, what))
        return labels, None
    if all(isinstance(v, list) for v in value):
        probs = _to_probabilities(_vectors(value, n, what))
        return probs.argmax(axis=1).astype(np.int64), probs
    return np.array([_label(v, what) for v in value], dtype=np.int64), None


def _label(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer():
        raise TargetResponseError(f"{what}; {v!r} is not an integer label")
    return int(v)


def _vectors(value: Any, n: int, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TargetResponseError(f"{what}; score vectors are ragged or not numbers") from exc
    if arr.ndim != 2 or len(arr) != n or arr.shape[1] == 0 or not np.isfinite(arr).all():
        raise TargetResponseError(f"{what}; expected {n} finite score vectors, got shape {arr.shape}")
    return arr


def _to_probabilities(scores: np.ndarray) -> np.ndarray:
    """Scores as probabilities: kept (renormalised) if they already are, else softmaxed as logits.

    Rows of values in [0, 1] summing to 1 within 0.05 count as probabilities, so answers a
    server rounded to two decimals are not mistaken for logits.
    """
    if (scores >= 0).all() and (scores <= 1).all() and np.allclose(scores.sum(axis=1), 1.0, atol=0.05):
        return scores / scores.sum(axis=1, keepdims=True)
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), capped."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S) if math.isfinite(seconds) else None


def _snippet(response: httpx.Response) -> str:
    text = response.content[:_BODY_SNIPPET].decode("utf-8", errors="replace").strip()
    return repr(text + ("…" if len(response.content) > _BODY_SNIPPET else ""))


def _redact(url: str) -> str:
    """The URL without credentials: user-info dropped, query values replaced by ``***``."""
    parsed = httpx.URL(url)
    query = "&".join(f"{k}=***" for k, _ in parsed.params.multi_items())
    return str(parsed.copy_with(userinfo=b"", query=query.encode() or None))


__all__ = ["HttpTarget", "QueryRecord", "inputs_sha256", "INPUTS", "INPUTS_FLAT", "DEFAULT_TEMPLATE", "ENCODINGS"]
