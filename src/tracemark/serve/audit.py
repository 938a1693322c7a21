"""The audit log: one SQLite row per answered query (one input of a batch), with retention and export.

Each row holds the client, the UTC time, the request id, the input's index in its batch, the
SHA-256 of the input (little-endian float32, C order: ``tracemark.targets.http.inputs_sha256``
of that one input) and of the whole batch (what an HttpTarget transcript records), the output
policy and the exact answer returned. Rows are written before the answer is sent; if they
cannot be written, the query is not answered.

Rows are first appended to a journal (:mod:`tracemark.serve.journal`: one ``write`` per request,
as durable as a SQLite commit in WAL mode) and reach the SQLite table within
``JOURNAL_INTERVAL_S``. Readers in the serving process see every row at once; readers in other
processes see the rows of live servers up to that interval late.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from tracemark._util.canonical import canonical_json
from tracemark._util.files import atomic_write_bytes
from tracemark.serve._db import SqliteFile
from tracemark.serve.clients import Client, utc_now
from tracemark.serve.errors import ServeConfigError
from tracemark.serve.journal import IMPORTED_SCHEMA, Journal

EXPORT_FORMAT = "tracemark-serve-audit"
EXPORT_VERSION = 1
PURGE_INTERVAL_S = 3600.0
"""How often (at most) the journal's importer deletes rows older than the retention period."""
JOURNAL_INTERVAL_S = 0.1
"""How often the serving process moves its journaled rows into the SQLite table."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    client_id TEXT NOT NULL,
    client_name TEXT NOT NULL,
    request_id TEXT NOT NULL,
    batch_index INTEGER NOT NULL,
    input_sha256 TEXT NOT NULL,
    batch_sha256 TEXT NOT NULL,
    policy TEXT NOT NULL,
    answer TEXT NOT NULL
);
""" + IMPORTED_SCHEMA
# No secondary indexes: each would cost every answered query an index update, while only exports
# and the hourly purge filter by time or client (and scan).
_INSERT = ("INSERT INTO queries (time, client_id, client_name, request_id, batch_index, input_sha256, batch_sha256, policy, answer)"
           " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
_COLUMNS = "id, time, client_id, client_name, request_id, batch_index, input_sha256, batch_sha256, policy, answer"


@dataclass(frozen=True)
class AuditRecord:
    """One answered query."""

    id: int
    time: str
    client_id: str
    client_name: str
    request_id: str
    batch_index: int
    input_sha256: str
    batch_sha256: str
    policy: str
    answer: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"#{self.id} {self.time} {self.client_name} {self.request_id}[{self.batch_index}] {self.input_sha256[:16]}… -> {self.answer}"


@dataclass(frozen=True)
class AuditExport:
    """An exported slice of the audit log: where it was written, how many rows, and the file's SHA-256."""

    path: str
    rows: int
    sha256: str
    first: str | None
    last: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        span = f"{self.first} to {self.last}" if self.rows else "no rows"
        return f"exported {self.rows} audit rows ({span}) to {self.path}\n  sha256 {self.sha256}"


def _iso(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ServeConfigError("give audit time bounds with a time zone (UTC)")
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AuditLog:
    """The SQLite audit log (WAL). ``retention_days`` (None: keep forever) bounds how long rows are kept.

    ``synchronous="NORMAL"`` survives a crash of the server; ``"FULL"`` also a power cut, at one
    fsync per request. Call :meth:`close` at shutdown (the server does) to import the last rows.
    """

    def __init__(self, path: str | os.PathLike[str], retention_days: float | None = None, synchronous: str = "NORMAL",
                 journal_interval: float = JOURNAL_INTERVAL_S) -> None:
        if retention_days is not None and not retention_days > 0:
            raise ServeConfigError(f"retention must be a positive number of days, not {retention_days}")
        self.db = SqliteFile(path, _SCHEMA, synchronous)
        self.retention_days = retention_days
        self._last_purge = float("-inf")
        self.journal = Journal(self.db.path, lambda: self.db.open(shared=True), _import_rows,
                               fsync=self.db.synchronous == "FULL", interval=journal_interval, on_flush=self._maybe_purge)

    def record(self, client: Client, request_id: str, inputs: np.ndarray, answers: list[dict[str, Any]], policy: str) -> None:
        """Journal one request's rows, one per input (all or none), as one line; they reach the table within
        ``JOURNAL_INTERVAL_S``. Only hashing and one ``write`` happen here; the rows are formatted on import."""
        data = np.ascontiguousarray(inputs, dtype="<f4")
        batch_sha = hashlib.sha256(data).hexdigest()
        input_shas = [batch_sha] if len(data) == 1 else [hashlib.sha256(item).hexdigest() for item in data]
        self.journal.append([time.time_ns(), client.id, client.name, request_id, policy, batch_sha, input_shas, answers])

    def flush(self) -> int:
        """Move journaled rows into the table now (this process's, and those of servers that have stopped)."""
        return self.journal.flush()

    def close(self) -> None:
        """Import the last journaled rows and stop the background importer."""
        self.journal.close()

    def _maybe_purge(self) -> None:
        """Purge expired rows if an interval has passed (called by the journal's importer)."""
        if self.retention_days is None or time.monotonic() - self._last_purge < PURGE_INTERVAL_S:
            return
        self._last_purge = time.monotonic()
        self.purge()

    def purge(self, now: datetime | None = None) -> int:
        """Delete rows older than the retention period; returns how many went."""
        if self.retention_days is None:
            return 0
        cutoff = _iso((now or datetime.now(timezone.utc)) - timedelta(days=self.retention_days))
        with self.db.write() as conn:
            return conn.execute("DELETE FROM queries WHERE time < ?", (cutoff,)).rowcount

    def _where(self, since: datetime | str | None, until: datetime | str | None, client_id: str | None) -> tuple[str, list[Any]]:
        clauses, args = [], []
        for clause, value in (("time >= ?", _iso(since)), ("time < ?", _iso(until)), ("client_id = ?", client_id)):
            if value is not None:
                clauses.append(clause)
                args.append(value)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def count(self, since: datetime | str | None = None, until: datetime | str | None = None, client_id: str | None = None) -> int:
        """Rows in the log (optionally in a time window, for one client)."""
        self.flush()
        where, args = self._where(since, until, client_id)
        return int(self.db.connection().execute(f"SELECT count(*) FROM queries{where}", args).fetchone()[0])

    def records(self, since: datetime | str | None = None, until: datetime | str | None = None,
                client_id: str | None = None) -> Iterator[AuditRecord]:
        """Rows in id order (optionally in ``[since, until)``, for one client)."""
        self.flush()
        where, args = self._where(since, until, client_id)
        for row in self.db.connection().execute(f"SELECT {_COLUMNS} FROM queries{where} ORDER BY id", args):
            yield AuditRecord(*row[:9], answer=json.loads(row[9]))

    def export(self, out: str | os.PathLike[str], since: datetime | str | None = None, until: datetime | str | None = None,
               client_id: str | None = None) -> AuditExport:
        """Write rows as one canonical JSON document (format ``tracemark-serve-audit`` v1), atomically.

        The file can be attached to the evidence ledger (``tracemark audit export --record``) and so
        travels in evidence bundles.
        """
        records = [r.to_dict() for r in self.records(since, until, client_id)]
        doc = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "exported": utc_now(),
            "source": Path(self.db.path).name,
            "filter": {"since": _iso(since), "until": _iso(until), "client_id": client_id},
            "query": "one input of a batch; batch_index is its position in its request",
            "input_hash": "sha256 of the input's little-endian float32 bytes, C order; batch_sha256 likewise for the request's whole batch",
            "rows": len(records),
            "records": records,
        }
        data = canonical_json(doc) + b"\n"
        path = atomic_write_bytes(out, data, mode=0o600)
        first, last = (records[0]["time"], records[-1]["time"]) if records else (None, None)
        return AuditExport(str(path), len(records), hashlib.sha256(data).hexdigest(), first, last)


def _iso_ns(ns: int) -> str:
    """A Unix time in nanoseconds as :func:`~tracemark.serve.clients.utc_now` writes times."""
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1000:06d}Z"


def _import_rows(conn: sqlite3.Connection, requests: list[list[Any]]) -> int:
    """Insert the rows of journaled requests (as :meth:`AuditLog.record` wrote them); returns how many."""
    rows = [
        (_iso_ns(ns), client_id, client_name, request_id, i, input_sha, batch_sha, policy, json.dumps(answer, separators=(",", ":")))
        for ns, client_id, client_name, request_id, policy, batch_sha, input_shas, answers in requests
        for i, (input_sha, answer) in enumerate(zip(input_shas, answers, strict=True))
    ]
    conn.executemany(_INSERT, rows)
    return len(rows)


__all__ = ["AuditLog", "AuditRecord", "AuditExport", "EXPORT_FORMAT"]
