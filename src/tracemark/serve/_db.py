"""SQLite files shared by server workers: WAL journal, one connection per process and thread."""

from __future__ import annotations

import fcntl
import mmap
import os
import sqlite3
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tracemark._util.sqlite import immediate_transaction
from tracemark.serve.errors import ServeConfigError

SYNC_MODES = ("OFF", "NORMAL", "FULL")
_COUNTER = struct.Struct("<Q")


class SqliteFile:
    """A SQLite database in WAL mode, safe to use from several threads and worker processes.

    Each (process, thread) pair gets its own connection, opened on first use, so a forked
    uvicorn worker never reuses its parent's. The file is created owner-only (0600).
    """

    def __init__(self, path: str | os.PathLike[str], schema: str, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in SYNC_MODES:
            raise ServeConfigError(f"synchronous must be one of {', '.join(SYNC_MODES)}, not {synchronous!r}")
        self.path = Path(path)
        self._schema = schema
        self.synchronous = synchronous.upper()
        self._local = threading.local()
        if not self.path.parent.is_dir():
            raise ServeConfigError(f"cannot create {self.path}: directory {self.path.parent} does not exist")
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.connection()  # create the schema now, so errors show at start-up

    def open(self, shared: bool = False) -> sqlite3.Connection:
        """A new connection (autocommit, WAL, the schema applied); ``shared`` lets other threads use it
        under the caller's own lock."""
        try:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=not shared)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.executescript(self._schema)
        except sqlite3.DatabaseError as exc:
            raise ServeConfigError(f"{self.path}: not a usable SQLite database ({exc})") from exc
        return conn

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (autocommit; use :meth:`write` for transactions)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = self.open()
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @contextmanager
    def write(self, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``) on ``conn`` (default: this thread's connection),
        committed on success, rolled back on error."""
        with immediate_transaction(conn or self.connection()) as conn:
            yield conn

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None


class ChangeCounter:
    """A 64-bit counter in a small file next to a database, bumped after each change made through our API.

    Readers map the file and compare one integer per request (well under a microsecond), so a process
    can cache rows of the database and still see another process's change (a revoked key) on its very
    next request. Changes made around the API (the ``sqlite3`` shell) do not bump it; cache holders
    should also re-read after a short time.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _COUNTER.size:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_size < _COUNTER.size:
                    os.ftruncate(fd, _COUNTER.size)
                fcntl.flock(fd, fcntl.LOCK_UN)
            self._map = mmap.mmap(fd, _COUNTER.size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)

    @property
    def value(self) -> int:
        """The current count."""
        return int(_COUNTER.unpack_from(self._map)[0])

    def bump(self) -> int:
        """Add one (under an exclusive lock, so concurrent bumps are not lost); returns the new count."""
        fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            value = int(_COUNTER.unpack(os.pread(fd, _COUNTER.size, 0))[0]) + 1
            os.pwrite(fd, _COUNTER.pack(value), 0)
            return value
        finally:
            os.close(fd)
