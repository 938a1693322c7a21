"""Errors of the prediction server; each carries the HTTP status it is answered with."""

from __future__ import annotations

from tracemark.errors import ShapeMismatchError, TracemarkError


class ServeError(TracemarkError):
    """A request or server-side problem of ``tracemark serve``; ``status`` is its HTTP status."""

    status: int = 500


class ServeConfigError(ServeError):
    """The server cannot start with this configuration (model, limits, store paths)."""

    status = 500


class MissingApiKeyError(ServeError):
    """The request carries no API key."""

    status = 401


class UnknownApiKeyError(ServeError):
    """The API key matches no client."""

    status = 401


class RevokedApiKeyError(ServeError):
    """The API key belonged to a client that has been revoked."""

    status = 403


class RateLimitedError(ServeError):
    """The client has spent its query allowance; ``retry_after`` seconds until it may ask again."""

    status = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PayloadTooLargeError(ServeError):
    """The request body is larger than the server accepts."""

    status = 413


class ImageTooLargeError(PayloadTooLargeError):
    """An uploaded image (or a request's images together) has more pixels than the server decodes."""


class AdminTokenError(ServeError):
    """An admin-only route (``GET /metrics`` with an admin token configured) was asked without that token."""

    status = 401


class InvalidInputError(ServeError, ShapeMismatchError):
    """The inputs are malformed: not JSON, wrong shape, wrong type, out of range, NaN."""

    status = 422


class UnsupportedMediaTypeError(ServeError):
    """The request body's ``Content-Type`` is not one the route reads."""

    status = 415


class LicenceExpiredError(ServeError):
    """The served package's licence has run out; the server no longer answers."""

    status = 503


class AuditWriteError(ServeError):
    """The audit log could not record a query, so it is not answered."""

    status = 503


class UnknownClientError(ServeError):
    """No client of that name or id exists in the client store."""

    status = 404


__all__ = [
    "ServeError",
    "ServeConfigError",
    "MissingApiKeyError",
    "UnknownApiKeyError",
    "RevokedApiKeyError",
    "RateLimitedError",
    "PayloadTooLargeError",
    "ImageTooLargeError",
    "AdminTokenError",
    "InvalidInputError",
    "UnsupportedMediaTypeError",
    "LicenceExpiredError",
    "AuditWriteError",
    "UnknownClientError",
]
