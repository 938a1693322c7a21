"""Per-client token buckets: ``rate`` queries per second, up to ``burst`` at once.

A query is one input, so a batch of 32 costs 32 tokens. :class:`MemoryLimiter` keeps the
buckets in the process (one worker); :class:`SqliteLimiter` keeps them in a SQLite file so
that several uvicorn workers share one allowance per client.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from tracemark.serve._db import SqliteFile
from tracemark.serve.errors import InvalidInputError, RateLimitedError, ServeConfigError


@dataclass(frozen=True)
class Allowance:
    """A client's refill rate (queries per second) and bucket size (queries)."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        if not (self.rate > 0 and self.burst >= 1 and math.isfinite(self.rate) and math.isfinite(self.burst)):
            raise ServeConfigError(f"rate limit needs rate > 0 and burst >= 1, got rate {self.rate}, burst {self.burst}")


def take(tokens: float, updated: float, now: float, cost: int, allowance: Allowance) -> tuple[float, float]:
    """One bucket step: (tokens left, seconds to wait). A wait > 0 means refused, tokens unspent.

    A clock that went backwards (``now < updated``, e.g. after a reboot) restarts refilling from now.
    """
    elapsed = max(0.0, now - updated)
    level = min(allowance.burst, tokens + elapsed * allowance.rate)
    if cost <= level:
        return level - cost, 0.0
    return level, (cost - level) / allowance.rate


def check_cost(cost: int, allowance: Allowance) -> None:
    """Refuse (422) a batch larger than the bucket: it could never pass, however long the client waits."""
    if cost > allowance.burst:
        raise InvalidInputError(
            f"a batch of {cost} inputs exceeds this client's burst of {allowance.burst:g} queries; send smaller batches"
        )


def _refuse(wait: float, cost: int, allowance: Allowance) -> RateLimitedError:
    return RateLimitedError(
        f"rate limit: {allowance.rate:g} queries/s, burst {allowance.burst:g}; {cost} more queries allowed in {wait:.2f} s",
        retry_after=wait,
    )


class Limiter(Protocol):
    """Charges ``cost`` queries to a client's bucket or raises :class:`RateLimitedError`; gives back queries
    charged in advance and not used (up to the bucket's size)."""

    def charge(self, client_id: str, cost: int, allowance: Allowance) -> None: ...

    def refund(self, client_id: str, cost: int, allowance: Allowance) -> None: ...


class MemoryLimiter:
    """Buckets in this process's memory (thread-safe)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def charge(self, client_id: str, cost: int, allowance: Allowance) -> None:
        check_cost(cost, allowance)
        with self._lock:
            now = time.monotonic()
            tokens, updated = self._buckets.get(client_id, (allowance.burst, now))
            tokens, wait = take(tokens, updated, now, cost, allowance)
            self._buckets[client_id] = (tokens, now)
        if wait > 0:
            raise _refuse(wait, cost, allowance)

    def refund(self, client_id: str, cost: int, allowance: Allowance) -> None:
        with self._lock:
            if client_id in self._buckets:
                tokens, updated = self._buckets[client_id]
                self._buckets[client_id] = (min(allowance.burst, tokens + cost), updated)


_SCHEMA = "CREATE TABLE IF NOT EXISTS buckets (client_id TEXT PRIMARY KEY, tokens REAL NOT NULL, updated REAL NOT NULL);"


class SqliteLimiter:
    """Buckets in a SQLite file, shared by every worker process (one write transaction per charge).

    Times are ``CLOCK_MONOTONIC``, which all processes on one machine share.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.db = SqliteFile(path, _SCHEMA, synchronous="OFF")  # buckets need no durability

    def charge(self, client_id: str, cost: int, allowance: Allowance) -> None:
        check_cost(cost, allowance)
        with self.db.write() as conn:
            now = time.monotonic()
            row = conn.execute("SELECT tokens, updated FROM buckets WHERE client_id = ?", (client_id,)).fetchone()
            tokens, updated = row if row else (allowance.burst, now)
            tokens, wait = take(tokens, updated, now, cost, allowance)
            conn.execute("INSERT OR REPLACE INTO buckets VALUES (?, ?, ?)", (client_id, tokens, now))
        if wait > 0:
            raise _refuse(wait, cost, allowance)

    def refund(self, client_id: str, cost: int, allowance: Allowance) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE buckets SET tokens = MIN(?, tokens + ?) WHERE client_id = ?", (allowance.burst, cost, client_id))


__all__ = ["Allowance", "Limiter", "MemoryLimiter", "SqliteLimiter", "check_cost", "take"]
