"""SQLite write transactions that hold the database's write lock from their first statement."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def immediate_transaction(conn: sqlite3.Connection,
                          locked: Callable[[sqlite3.OperationalError], Exception] | None = None
                          ) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` on ``conn``, committed when the block ends, rolled back if it raises.

    When the ``BEGIN`` fails (the write lock was not had within the connection's timeout), ``locked(exc)`` is
    raised instead, if given, before the block runs.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if locked is None:
            raise
        raise locked(exc) from exc
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
