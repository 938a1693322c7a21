"""Protected serving: a hardened local prediction API for a package or model (capability 8).

``create_app(model, config)`` gives a FastAPI app; ``tracemark serve`` runs it on uvicorn.
Clients and their hashed API keys live in :class:`ClientStore`; every answered query (one
input) is a row of the :class:`AuditLog`. Guide: docs/guide/serving.md.

Names are imported on first use, so the CLI starts without torch.
"""

from __future__ import annotations

from tracemark._util.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "Server": "tracemark.serve.app",
    "app_from_env": "tracemark.serve.app",
    "create_app": "tracemark.serve.app",
    "AuditExport": "tracemark.serve.audit",
    "AuditLog": "tracemark.serve.audit",
    "AuditRecord": "tracemark.serve.audit",
    "Client": "tracemark.serve.clients",
    "ClientStore": "tracemark.serve.clients",
    "IssuedKey": "tracemark.serve.clients",
    "ServeConfig": "tracemark.serve.config",
    "UnlockSpec": "tracemark.serve.config",
    "AuditWriteError": "tracemark.serve.errors",
    "InvalidInputError": "tracemark.serve.errors",
    "LicenceExpiredError": "tracemark.serve.errors",
    "MissingApiKeyError": "tracemark.serve.errors",
    "PayloadTooLargeError": "tracemark.serve.errors",
    "RateLimitedError": "tracemark.serve.errors",
    "RevokedApiKeyError": "tracemark.serve.errors",
    "ServeConfigError": "tracemark.serve.errors",
    "ServeError": "tracemark.serve.errors",
    "UnknownApiKeyError": "tracemark.serve.errors",
    "UnknownClientError": "tracemark.serve.errors",
    "UnsupportedMediaTypeError": "tracemark.serve.errors",
    "AnswerHook": "tracemark.serve.hooks",
    "ServedModel": "tracemark.serve.model",
    "from_file": "tracemark.serve.model",
    "from_module": "tracemark.serve.model",
    "from_package": "tracemark.serve.model",
    "effective_policy": "tracemark.serve.policy",
    "restrict": "tracemark.serve.policy",
    "Allowance": "tracemark.serve.ratelimit",
    "MemoryLimiter": "tracemark.serve.ratelimit",
    "SqliteLimiter": "tracemark.serve.ratelimit",
    "InputSpec": "tracemark.serve.validation",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
