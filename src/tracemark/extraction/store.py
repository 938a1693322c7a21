"""The evidence of response marking: each client's marked inputs and the answers served (SQLite, WAL).

Only marked inputs are kept — at the default rate about one in 200 of a client's distinct inputs —
with the model's own label, the served (wrong) label and the served probability row. Asking the
same input again updates ``last_seen`` and ``times``; the first answer is never overwritten.
Per-client marking rates live here too, so ``tracemark responses rate`` reaches running servers, and the
marking profile (:mod:`~tracemark.extraction.profile`) that servers load when they start.

The per-client marking budget (:meth:`ResponseStore.settle`) keeps two more things per client: a counter of the
inputs answered (added to by each server worker when it next needs a budget decision, so it may lag, which only
makes the budget stricter), and the keys — only the keys, not the inputs — of *spared* inputs: typical inputs
whose keyed draw said "mark" but which the budget answered honestly, and which are answered honestly from then on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tracemark._util.canonical import canonical_json
from tracemark._util.files import atomic_write_bytes
from tracemark.extraction.errors import ResponseStoreError
from tracemark.extraction.profile import MarkingProfile
from tracemark.extraction.settings import MAX_RATE
from tracemark.serve._db import SqliteFile
from tracemark.serve.clients import Client, utc_now

EXPORT_FORMAT = "tracemark-marked-responses"
EXPORT_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS marked (
    client_id TEXT NOT NULL,
    client_name TEXT NOT NULL,
    input_key TEXT NOT NULL,
    shape TEXT NOT NULL,
    input BLOB NOT NULL,
    model_label INTEGER NOT NULL,
    served_label INTEGER NOT NULL,
    probabilities TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    times INTEGER NOT NULL,
    PRIMARY KEY (client_id, input_key)
);
CREATE TABLE IF NOT EXISTS profile (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    document TEXT NOT NULL,
    set_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS spared (
    client_id TEXT NOT NULL,
    input_key TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    PRIMARY KEY (client_id, input_key)
);
CREATE TABLE IF NOT EXISTS answered (
    client_id TEXT PRIMARY KEY,
    client_name TEXT NOT NULL,
    inputs INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rates (
    client_id TEXT PRIMARY KEY,
    client_name TEXT NOT NULL,
    rate REAL NOT NULL,
    set_at TEXT NOT NULL
);
"""
_UPSERT = (
    "INSERT INTO marked (client_id, client_name, input_key, shape, input, model_label, served_label, probabilities,"
    " first_seen, last_seen, times) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)"
    " ON CONFLICT (client_id, input_key) DO UPDATE SET last_seen = excluded.last_seen, times = times + 1"
)
_ADD_ANSWERED = (
    "INSERT INTO answered (client_id, client_name, inputs) VALUES (?, ?, ?)"
    " ON CONFLICT (client_id) DO UPDATE SET inputs = inputs + excluded.inputs, client_name = excluded.client_name"
)


def check_rate(rate: float) -> float:
    """``rate`` if it is a fraction in [0, 0.5]; :class:`ResponseStoreError` otherwise."""
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and 0.0 <= rate <= MAX_RATE):
        raise ResponseStoreError(f"a marking rate is a fraction between 0 and {MAX_RATE} (e.g. 0.005), not {rate!r}")
    return float(rate)


@dataclass(frozen=True)
class MarkedResponse:
    """One marked answer as kept for evidence."""

    input_key: str
    x: np.ndarray
    model_label: int
    served_label: int
    probabilities: np.ndarray


@dataclass(frozen=True)
class Candidate:
    """An input whose keyed draw says "mark", waiting for the budget: its would-be marked answer, whether the profile
    calls it unusual (then the budget does not hold it back), and how many inputs of the same request come after it
    (they are not counted as answered when it is decided)."""

    response: MarkedResponse
    unusual: bool
    later: int = 0


@dataclass(frozen=True)
class MarkedSet:
    """One client's marked inputs (float32 N×C×H×W, as received) with the model's and the served labels."""

    client_id: str
    client_name: str
    inputs: np.ndarray
    model_labels: np.ndarray
    served_labels: np.ndarray
    num_classes: int

    def __len__(self) -> int:
        return len(self.served_labels)


@dataclass(frozen=True)
class ClientSummary:
    """How many marked answers a client has received, its own rate if set, the inputs answered to it (as far as the
    server workers have added them) and how many drawn marks the budget spared."""

    client_id: str
    client_name: str
    marked: int
    rate: float | None
    answered: int = 0
    spared: int = 0

    def to_dict(self) -> dict:
        return {"client_id": self.client_id, "client_name": self.client_name, "marked": self.marked, "rate": self.rate,
                "answered": self.answered, "spared": self.spared}


@dataclass(frozen=True)
class ResponsesExport:
    """An export of marked responses: where, how many clients and answers, and the file's SHA-256."""

    path: Path
    clients: int
    marked: int
    sha256: str

    def to_dict(self) -> dict:
        return {"path": str(self.path), "clients": self.clients, "marked": self.marked, "sha256": self.sha256}

    def __str__(self) -> str:
        return f"{self.marked} marked answers of {self.clients} client(s) -> {self.path} (sha256 {self.sha256})"


def _set_to_dict(marked: MarkedSet) -> dict:
    return {"client_id": marked.client_id, "client_name": marked.client_name, "num_classes": marked.num_classes,
            "shape": list(marked.inputs.shape[1:]),
            "inputs_f32le_b64": [base64.b64encode(np.ascontiguousarray(x, dtype="<f4").tobytes()).decode() for x in marked.inputs],
            "model_labels": marked.model_labels.tolist(), "served_labels": marked.served_labels.tolist()}


def load_export(path: str | os.PathLike[str]) -> list[MarkedSet]:
    """The marked sets in an export file (``tracemark responses export``), for checking suspects offline."""
    try:
        doc = json.loads(Path(path).read_bytes())
        if doc.get("format") != EXPORT_FORMAT or doc.get("version") != EXPORT_VERSION:
            raise ResponseStoreError(f"{path} is not a {EXPORT_FORMAT} v{EXPORT_VERSION} file")
        sets = []
        for c in doc["clients"]:
            shape = tuple(int(d) for d in c["shape"])
            inputs = np.stack([np.frombuffer(base64.b64decode(v), dtype="<f4").reshape(shape) for v in c["inputs_f32le_b64"]])
            sets.append(MarkedSet(c["client_id"], c["client_name"], inputs.astype(np.float32), np.array(c["model_labels"], np.int64),
                                  np.array(c["served_labels"], np.int64), int(c["num_classes"])))
        return sets
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ResponseStoreError(f"cannot read marked responses from {path}: {exc}") from exc


def _row(client: Client, m: MarkedResponse, when: str) -> tuple:
    return (client.id, client.name, m.input_key, ",".join(str(d) for d in m.x.shape),
            zlib.compress(np.ascontiguousarray(m.x, dtype="<f4").tobytes()), m.model_label, m.served_label,
            json.dumps([float(v) for v in m.probabilities]), when, when)


class ResponseStore:
    """Marked inputs and served answers per client, and per-client marking rates, in one SQLite file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.db = SqliteFile(path, _SCHEMA)
        self.path = self.db.path

    def record(self, client: Client, marked: Sequence[MarkedResponse], when: str | None = None) -> None:
        """Keep marked answers (first answer wins; repeats only count)."""
        when = when or utc_now()
        rows = [_row(client, m, when) for m in marked]
        with self.db.write() as conn:
            conn.executemany(_UPSERT, rows)

    def settle(self, client: Client, answered: int, candidates: Sequence[Candidate], cap: float | None,
               when: str | None = None) -> list[bool]:
        """Apply the marking budget to would-be marks, in ONE write transaction, and return which are served marked.

        Adds ``answered`` (inputs answered to the client since this worker last added, including this request's) to
        the client's counter, then decides each candidate in order: a key already marked stays marked (a repeat); a
        key spared stays honest; an unusual input (or any input when ``cap`` is ``None``) is marked; otherwise the
        input is marked only if the client's marks, this one included, stay within ``cap ×`` its answered inputs
        (those after the candidate in the same request not counted), and spared (its key kept) if not."""
        when = when or utc_now()
        cap = None if cap is None else check_rate(cap)
        served: list[bool] = []
        with self.db.write() as conn:
            if answered:
                conn.execute(_ADD_ANSWERED, (client.id, client.name, int(answered)))
            row = conn.execute("SELECT inputs FROM answered WHERE client_id = ?", (client.id,)).fetchone()
            total = int(row[0]) if row else 0
            count = conn.execute("SELECT COUNT(*) FROM marked WHERE client_id = ?", (client.id,)).fetchone()[0]
            for c in candidates:
                key = c.response.input_key
                if conn.execute("SELECT 1 FROM marked WHERE client_id = ? AND input_key = ?", (client.id, key)).fetchone():
                    mark = True
                elif conn.execute("SELECT 1 FROM spared WHERE client_id = ? AND input_key = ?", (client.id, key)).fetchone():
                    mark = False
                else:
                    mark = c.unusual or cap is None or count + 1 <= cap * (total - c.later) + 1e-9
                    if mark:
                        count += 1
                    else:
                        conn.execute("INSERT INTO spared (client_id, input_key, first_seen) VALUES (?, ?, ?)", (client.id, key, when))
                if mark:
                    conn.execute(_UPSERT, _row(client, c.response, when))
                served.append(mark)
        return served

    def add_answered(self, counts: dict[str, tuple[str, int]]) -> None:
        """Add inputs answered (client id → (name, count)) to the clients' counters, in one transaction."""
        rows = [(cid, name, int(n)) for cid, (name, n) in counts.items() if n]
        if rows:
            with self.db.write() as conn:
                conn.executemany(_ADD_ANSWERED, rows)

    def answered(self, client_id: str) -> int:
        """Inputs answered to a client, as far as the server workers have added them to the store."""
        row = self.db.connection().execute("SELECT inputs FROM answered WHERE client_id = ?", (client_id,)).fetchone()
        return 0 if row is None else int(row[0])

    def spared(self, client_id: str) -> set[str]:
        """The input keys the budget spared for a client (answered honestly, now and on every repeat)."""
        return {k for (k,) in self.db.connection().execute("SELECT input_key FROM spared WHERE client_id = ?", (client_id,))}

    def clients(self) -> list[ClientSummary]:
        """Every client with marked answers, its own rate, answered inputs or spared marks, by name."""
        conn = self.db.connection()
        counts = {cid: (name, n) for cid, name, n in
                  conn.execute("SELECT client_id, MAX(client_name), COUNT(*) FROM marked GROUP BY client_id")}
        rates = {cid: (name, rate) for cid, name, rate in conn.execute("SELECT client_id, client_name, rate FROM rates")}
        answered = {cid: (name, n) for cid, name, n in conn.execute("SELECT client_id, client_name, inputs FROM answered")}
        spared = dict(conn.execute("SELECT client_id, COUNT(*) FROM spared GROUP BY client_id").fetchall())
        ids = set(counts) | set(rates) | set(answered) | set(spared)

        def name(cid: str) -> str:
            return next((d[cid][0] for d in (counts, rates, answered) if cid in d), "")

        found = [ClientSummary(cid, name(cid), counts.get(cid, ("", 0))[1], rates[cid][1] if cid in rates else None,
                               answered.get(cid, ("", 0))[1], int(spared.get(cid, 0))) for cid in ids]
        return sorted(found, key=lambda c: (c.client_name, c.client_id))

    def marked(self, client_id: str) -> MarkedSet:
        """One client's marked set; :class:`ResponseStoreError` if its rows disagree on shape or classes."""
        rows = self.db.connection().execute(
            "SELECT client_name, shape, input, model_label, served_label, probabilities FROM marked"
            " WHERE client_id = ? ORDER BY first_seen, input_key", (client_id,)).fetchall()
        if not rows:
            return MarkedSet(client_id, "", np.zeros((0,), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64), 0)
        shapes = {r[1] for r in rows}
        classes = {len(json.loads(r[5])) for r in rows}
        if len(shapes) != 1 or len(classes) != 1:
            raise ResponseStoreError(f"{self.path}: client {client_id} has marked inputs of several shapes or class counts")
        shape = tuple(int(d) for d in shapes.pop().split(","))
        try:
            inputs = np.stack([np.frombuffer(zlib.decompress(r[2]), dtype="<f4").reshape(shape) for r in rows])
        except (zlib.error, ValueError) as exc:
            raise ResponseStoreError(f"{self.path}: a marked input of client {client_id} is corrupt ({exc})") from exc
        return MarkedSet(client_id, rows[0][0], inputs.astype(np.float32),
                         np.array([r[3] for r in rows], np.int64), np.array([r[4] for r in rows], np.int64), classes.pop())

    def export(self, path: str | os.PathLike[str], client_id: str | None = None) -> ResponsesExport:
        """Write every client's (or one client's) marked set as canonical JSON, atomically."""
        ids = [client_id] if client_id else [c.client_id for c in self.clients() if c.marked]
        sets = [m for m in (self.marked(cid) for cid in ids) if len(m)]
        data = canonical_json({"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "clients": [_set_to_dict(m) for m in sets]})
        atomic_write_bytes(path, data, mode=0o600)
        return ResponsesExport(Path(path), len(sets), sum(len(m) for m in sets), hashlib.sha256(data).hexdigest())

    def set_rate(self, client: Client, rate: float | None) -> None:
        """Give a client its own marking rate (``None``: back to the server default)."""
        with self.db.write() as conn:
            if rate is None:
                conn.execute("DELETE FROM rates WHERE client_id = ?", (client.id,))
            else:
                conn.execute("INSERT INTO rates (client_id, client_name, rate, set_at) VALUES (?, ?, ?, ?)"
                             " ON CONFLICT (client_id) DO UPDATE SET rate = excluded.rate, set_at = excluded.set_at",
                             (client.id, client.name, check_rate(rate), utc_now()))

    def set_profile(self, profile: MarkingProfile) -> None:
        """Keep the marking profile that servers started on this store use (replaces any earlier one)."""
        with self.db.write() as conn:
            conn.execute("INSERT INTO profile (id, document, set_at) VALUES (1, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                         " document = excluded.document, set_at = excluded.set_at",
                         (canonical_json(profile.to_dict()).decode(), utc_now()))

    def profile(self) -> MarkingProfile | None:
        """The marking profile, or ``None`` (every input is marked at the same rate)."""
        row = self.db.connection().execute("SELECT document FROM profile WHERE id = 1").fetchone()
        return None if row is None else MarkingProfile.from_dict(json.loads(row[0]))

    def rate(self, client_id: str) -> float | None:
        """A client's own marking rate, or ``None`` for the server default."""
        row = self.db.connection().execute("SELECT rate FROM rates WHERE client_id = ?", (client_id,)).fetchone()
        return None if row is None else float(row[0])


__all__ = ["ResponseStore", "ResponsesExport", "MarkedResponse", "Candidate", "MarkedSet", "ClientSummary", "check_rate", "load_export", "MAX_RATE"]
