"""API clients: names, hashed API keys, per-client output policy and rate, revocation (SQLite)."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone

from tracemark.package.licence import OutputPolicy
from tracemark.serve._db import ChangeCounter, SqliteFile
from tracemark.serve.errors import (
    MissingApiKeyError,
    RevokedApiKeyError,
    ServeConfigError,
    UnknownApiKeyError,
    UnknownClientError,
)

TOKEN_PREFIX = "tmk_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    key_sha256 TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL,
    revoked TEXT,
    output_mode TEXT,
    top_k INTEGER,
    decimals INTEGER,
    rate REAL,
    burst REAL
);
"""
_COLUMNS = "id, name, created, revoked, output_mode, top_k, decimals, rate, burst"
CACHE_S = 1.0
"""Longest a server trusts a cached client record without re-reading it. Changes made with ``tracemark clients``
reach every server on its next request; this bounds the delay for changes made around it (e.g. the sqlite3 shell)."""
_CACHE_MAX = 10_000


def utc_now() -> str:
    """The current UTC time as ISO 8601 with microseconds and a ``Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def hash_token(token: str) -> str:
    """SHA-256 (hex) of an API key, as stored. Keys are 256-bit random, so no salt or stretching is needed."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Client:
    """A client of the server: who it is, whether it is revoked, and its own limits (``None``: server default)."""

    id: str
    name: str
    created: str
    revoked: str | None = None
    policy: OutputPolicy | None = None
    rate: float | None = None
    burst: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None

    def to_dict(self) -> dict:
        return {
            "id": self.id, "name": self.name, "created": self.created, "revoked": self.revoked,
            "policy": self.policy.to_dict() if self.policy else None, "rate": self.rate, "burst": self.burst,
        }

    def __str__(self) -> str:
        state = f"revoked {self.revoked}" if self.revoked else "active"
        policy = str(self.policy) if self.policy else "server default output"
        rate = f"{self.rate:g}/s burst {self.burst:g}" if self.rate is not None else "server default rate"
        return f"{self.name} ({self.id}): {state}, created {self.created}; {policy}; {rate}"


@dataclass(frozen=True)
class IssuedKey:
    """A new client and its API key; the key is shown once and only its hash is kept."""

    client: Client
    token: str

    def to_dict(self) -> dict:
        return {"client": self.client.to_dict(), "api_key": self.token}

    def __str__(self) -> str:
        return f"added {self.client}\napi key (shown once; store it now): {self.token}"


def _row(row: tuple) -> Client:
    cid, name, created, revoked, mode, top_k, decimals, rate, burst = row
    policy = OutputPolicy(mode, top_k, decimals) if mode else None
    return Client(cid, name, created, revoked, policy, rate, burst)


class ClientStore:
    """Clients and their hashed API keys in a SQLite file (WAL; safe across server workers).

    :meth:`authenticate` keeps the records it has read in memory, and drops them all when another
    process changes the store (``<store>.changes`` counts the changes), so a revocation takes effect on
    the next request of every server.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.db = SqliteFile(path, _SCHEMA)
        self.changes = ChangeCounter(self.db.path.with_name(self.db.path.name + ".changes"))
        self._cache: dict[str, tuple[Client, int, float]] = {}

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; once it commits, every process's cached records are stale."""
        with self.db.write() as conn:
            yield conn
        self.changes.bump()

    def add(self, name: str, policy: OutputPolicy | None = None, rate: float | None = None, burst: float | None = None) -> IssuedKey:
        """Create a client and its API key; ``rate`` is in queries (inputs) per second, ``burst`` in queries."""
        if not _NAME.match(name):
            raise ServeConfigError(f"client name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit")
        if (rate is None) != (burst is None) or (rate is not None and (rate <= 0 or burst is None or burst < 1)):
            raise ServeConfigError("give both rate > 0 and burst >= 1, or neither (server default)")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        client = Client("c_" + secrets.token_hex(8), name, utc_now(), None, policy, rate, burst)
        mode, top_k, decimals = (policy.mode, policy.top_k, policy.decimals) if policy else (None, None, None)
        try:
            with self._write() as conn:
                conn.execute(
                    "INSERT INTO clients (id, name, key_sha256, created, revoked, output_mode, top_k, decimals, rate, burst)"
                    " VALUES (?, ?, ?, ?, NULL, ?, ?, ?, ?, ?)",
                    (client.id, name, hash_token(token), client.created, mode, top_k, decimals, rate, burst),
                )
        except sqlite3.IntegrityError as exc:
            raise ServeConfigError(f"a client named {name!r} already exists (names are never reused, even after revocation)") from exc
        return IssuedKey(client, token)

    def list(self) -> list[Client]:
        """Every client, revoked ones included, oldest first."""
        rows = self.db.connection().execute(f"SELECT {_COLUMNS} FROM clients ORDER BY created, name").fetchall()
        return [_row(r) for r in rows]

    def get(self, name_or_id: str) -> Client:
        """The client with this name or id; :class:`UnknownClientError` if none."""
        row = self.db.connection().execute(
            f"SELECT {_COLUMNS} FROM clients WHERE name = ? OR id = ?", (name_or_id, name_or_id)
        ).fetchone()
        if row is None:
            raise UnknownClientError(f"no client named {name_or_id!r}; `tracemark clients list` shows them")
        return _row(row)

    def revoke(self, name_or_id: str) -> Client:
        """Revoke a client's key at once (already revoked: unchanged); returns the client."""
        client = self.get(name_or_id)
        if client.revoked is None:
            with self._write() as conn:
                conn.execute("UPDATE clients SET revoked = ? WHERE id = ? AND revoked IS NULL", (utc_now(), client.id))
        return self.get(client.id)

    def authenticate(self, token: str | None) -> Client:
        """The active client holding ``token``; raises 401 (missing, unknown) or 403 (revoked) errors."""
        if not token:
            raise MissingApiKeyError("no API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
        digest, changes, now = hash_token(token), self.changes.value, time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] == changes and now - cached[2] < CACHE_S:
            client = cached[0]
        else:
            row = self.db.connection().execute(f"SELECT {_COLUMNS} FROM clients WHERE key_sha256 = ?", (digest,)).fetchone()
            if row is None:  # unknown keys are not cached: a flood of made-up keys must not grow memory
                raise UnknownApiKeyError("API key not recognised")
            client = _row(row)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[digest] = (client, changes, now)
        if client.revoked is not None:
            raise RevokedApiKeyError(f"API key of client {client.name!r} was revoked at {client.revoked}")
        return client


__all__ = ["Client", "ClientStore", "IssuedKey", "hash_token", "TOKEN_PREFIX"]
