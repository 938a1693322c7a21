"""Errors of extraction resistance: response marking, clone checks and the stealing monitor."""

from __future__ import annotations

from tracemark.errors import TracemarkError
from tracemark.serve.errors import RateLimitedError, ServeError


class ExtractionError(TracemarkError):
    """Base class of the errors raised by :mod:`tracemark.extraction`."""


class MarkingSecretError(ExtractionError):
    """The response-marking master secret is missing, malformed, or stored with unsafe permissions."""


class ResponseStoreError(ExtractionError):
    """The store of marked responses cannot be opened or holds inconsistent rows."""


class MarkingWriteError(ServeError, ResponseStoreError):
    """A marked answer could not be recorded as evidence, so the query is not answered (HTTP 503)."""

    status = 503


class MarkingProfileError(ServeError, ExtractionError):
    """A marking profile is malformed, cannot be calibrated from the data given, or does not fit the inputs (HTTP 500)."""


class NoMarkedResponsesError(ExtractionError):
    """There are no marked responses to test a suspect against (no client, or none marked yet)."""


class MonitorConfigError(ExtractionError):
    """A stealing-monitor threshold or setting is out of range."""


class ThrottledError(RateLimitedError):
    """The stealing monitor has flagged this client and slowed it down (HTTP 429 with Retry-After)."""


__all__ = [
    "ExtractionError",
    "MarkingSecretError",
    "ResponseStoreError",
    "MarkingWriteError",
    "MarkingProfileError",
    "NoMarkedResponsesError",
    "MonitorConfigError",
    "ThrottledError",
]
