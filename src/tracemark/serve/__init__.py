"""Protected serving: a hardened local prediction API for a package or model (capability 8).

``create_app(model, config)`` gives a FastAPI app; ``tracemark serve`` runs it on uvicorn.
Clients and their hashed API keys live in :class:`ClientStore`; every answered query (one
input) is a row of the :class:`AuditLog`. Guide: docs/guide/serving.md.
"""

from tracemark.serve.app import Server, app_from_env, create_app
from tracemark.serve.audit import AuditExport, AuditLog, AuditRecord
from tracemark.serve.clients import Client, ClientStore, IssuedKey
from tracemark.serve.config import ServeConfig, UnlockSpec
from tracemark.serve.errors import (
    AuditWriteError,
    InvalidInputError,
    LicenceExpiredError,
    MissingApiKeyError,
    PayloadTooLargeError,
    RateLimitedError,
    RevokedApiKeyError,
    ServeConfigError,
    ServeError,
    UnknownApiKeyError,
    UnknownClientError,
)
from tracemark.serve.hooks import AnswerHook
from tracemark.serve.model import ServedModel, from_file, from_module, from_package
from tracemark.serve.policy import effective_policy, restrict
from tracemark.serve.ratelimit import Allowance, MemoryLimiter, SqliteLimiter
from tracemark.serve.validation import InputSpec

__all__ = [
    "create_app", "app_from_env", "Server", "ServeConfig", "UnlockSpec", "ServedModel", "from_module", "from_file",
    "from_package", "Client", "ClientStore", "IssuedKey", "AuditLog", "AuditRecord", "AuditExport", "AnswerHook",
    "Allowance", "MemoryLimiter", "SqliteLimiter", "InputSpec", "restrict", "effective_policy",
    "ServeError", "ServeConfigError", "MissingApiKeyError", "UnknownApiKeyError", "RevokedApiKeyError", "RateLimitedError",
    "PayloadTooLargeError", "InvalidInputError", "LicenceExpiredError", "AuditWriteError", "UnknownClientError",
]
