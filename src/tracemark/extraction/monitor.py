"""The stealing monitor: per-client signals over the query stream, alerts in SQLite and the ledger.

Three signals, each with its own threshold (:class:`MonitorSettings`), each alerting at most once per
client and server process:

* ``prada`` — PRADA (Juuti et al., EuroS&P 2019). For each new query of predicted class ``c`` the
  L2 distance to the nearest earlier query of the same class is added to the set D; the query joins
  the class's reference set when that distance exceeds mean − std of the reference distances.
  Natural queries give a roughly normal D; synthetic ones (adversarial steps, JBDA) do not. Every
  ``test_every`` queries a Shapiro–Wilk test runs on the last ``prada_window`` distances; W below
  ``prada_delta`` raises the alert. A repeated input (a retry, or a batch sent to two workers) adds no
  distance: the last ``prada_window`` distinct inputs are remembered by hash, and an input equal to a
  reference input has distance 0 and is skipped too, else retries alone would bend D away from normal.
  PRADA is known to miss attackers who query natural images
  (Knockoff, CopycatCNN with real data): the other two signals are for those.
* ``volume`` — more than ``volume`` queries within ``volume_window_s`` seconds.
* ``coverage`` — once a client has asked ``coverage_min_queries`` queries, the total-variation distance
  between the classes the model answered it and the expected class mix (``prior``, uniform unless
  given) exceeds ``coverage_tv``: out-of-domain query data piles onto a few classes.
* ``coalition`` — several keys of one thief (sybil clients), treated as one client for the volume signal: a
  client's *group* is itself and every other client (a) created within ``coalition_window_s`` of it (the
  ``created`` time of the client store), (b) whose stream is like its own once both have asked
  ``coalition_min_queries`` queries: answered-class mix within total-variation distance ``coalition_tv``, query
  count within a factor ``coalition_ratio`` (a thief spreads its budget evenly; this keeps an honest key made
  by chance near a thief's keys out of their group); the alert fires when the
  group has at least two clients and their combined queries within ``volume_window_s`` exceed
  ``coalition_volume``. Every member not yet flagged for it gets an alert naming the group (``group``), which
  ``tracemark responses check --group`` can then test as a group given in advance (the alert looks only at
  traffic, never at the marks).
  The check runs every ``test_every`` queries of a client, outside its lock. Clients whose creation time
  cannot be read take no part. Honest clients that were created together (one team's keys) and query alike
  alert too once their combined volume is that high: the bench measures the rate on honest traffic.

With ``throttle_rate`` set, a flagged client is held to that many queries per second (HTTP 429).
State is kept in memory per server process (with several workers, each sees part of a client's stream):
at most ``max_history`` reference inputs per class and client (2,000 × 784 floats ≈ 6 MB per MNIST class).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np

from tracemark.errors import TracemarkError
from tracemark.extraction.errors import ThrottledError
from tracemark.extraction.settings import MonitorSettings
from tracemark.serve._db import SqliteFile
from tracemark.serve.clients import Client, utc_now
from tracemark.serve.errors import RateLimitedError
from tracemark.serve.ratelimit import Allowance, MemoryLimiter
from tracemark.targets.base import Answers

Signal = Literal["prada", "volume", "coverage", "coalition"]
SIGNALS: tuple[Signal, ...] = ("prada", "volume", "coverage", "coalition")
ALERT_EVENT = "extraction-alert"
"""Ledger event of a monitor alert."""
_log = logging.getLogger(__name__)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS extraction_alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    client_id TEXT NOT NULL,
    client_name TEXT NOT NULL,
    signal TEXT NOT NULL,
    queries INTEGER NOT NULL,
    value REAL NOT NULL,
    threshold REAL NOT NULL,
    ledger_seq INTEGER,
    group_members TEXT
);
CREATE INDEX IF NOT EXISTS extraction_alerts_client ON extraction_alerts (client_id, time);
"""
_COLUMNS = "time, client_id, client_name, signal, queries, value, threshold, ledger_seq, group_members"


@dataclass(frozen=True)
class Alert:
    """One alert: which client, which signal, after how many of its queries, the value and the threshold; for a
    ``coalition`` alert, the group's client names (comma-separated, the alerted client first)."""

    time: str
    client_id: str
    client_name: str
    signal: str
    queries: int
    value: float
    threshold: float
    ledger_seq: int | None = None
    group: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        ledger = f" (ledger #{self.ledger_seq})" if self.ledger_seq is not None else ""
        group = f" with group {self.group}" if self.group else ""
        return (f"{self.time} {self.client_name} ({self.client_id}): {self.signal}{group} after {self.queries} queries, "
                f"value {self.value:.4g} vs threshold {self.threshold:.4g}{ledger}")


class AlertStore:
    """Monitor alerts in their own table of a SQLite file (by default the server's audit log)."""

    def __init__(self, path: str) -> None:
        self.db = SqliteFile(path, _SCHEMA)
        with self.db.write() as conn:  # a table made before coalition alerts lacks their column
            if "group_members" not in {row[1] for row in conn.execute("PRAGMA table_info(extraction_alerts)")}:
                conn.execute("ALTER TABLE extraction_alerts ADD COLUMN group_members TEXT")

    def add(self, alert: Alert) -> None:
        with self.db.write() as conn:
            conn.execute(f"INSERT INTO extraction_alerts ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (alert.time, alert.client_id, alert.client_name, alert.signal, alert.queries, alert.value,
                          alert.threshold, alert.ledger_seq, alert.group))

    def list(self, client_id: str | None = None) -> list[Alert]:
        """Alerts, oldest first (one client's when ``client_id`` is given)."""
        sql = f"SELECT {_COLUMNS} FROM extraction_alerts"
        args: tuple = ()
        if client_id is not None:
            sql, args = sql + " WHERE client_id = ?", (client_id,)
        return [Alert(*row) for row in self.db.connection().execute(sql + " ORDER BY id", args)]


@dataclass
class _ClassHistory:
    """PRADA's growing reference set for one class: vectors, squared norms, and the distances that admitted them."""

    vectors: np.ndarray
    norms: np.ndarray
    size: int = 0
    distances: list[float] = field(default_factory=list)


@dataclass
class _ClientState:
    """What the monitor remembers of one client: counts, PRADA's sets and distances, recent volume, alerts raised, and
    for the coalition signal the client itself, its creation time (epoch seconds) and when its group was last checked."""

    queries: int = 0
    counts: np.ndarray | None = None
    history: dict[int, _ClassHistory] = field(default_factory=dict)
    distances: deque = field(default_factory=deque)
    seen: dict[int, None] = field(default_factory=dict)
    recent: deque = field(default_factory=deque)
    alerted: set = field(default_factory=set)
    last_test: int = 0
    client: Client | None = None
    created: float | None = None
    last_group_test: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class StealingMonitor:
    """An :class:`~tracemark.serve.hooks.AnswerHook` that watches each client's queries and raises alerts.

    It never changes answers. ``alerts`` keeps the alerts (``None``: in memory only, see :attr:`raised`);
    ``ledger`` (a :class:`~tracemark.ledger.Ledger`) gets an ``extraction-alert`` entry for each.
    """

    def __init__(self, settings: MonitorSettings | None = None, alerts: AlertStore | None = None, ledger: Any = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings or MonitorSettings()
        self.alerts, self.ledger, self.clock = alerts, ledger, clock
        self.raised: list[Alert] = []
        self._states: dict[str, _ClientState] = {}
        self._lock = threading.Lock()
        self._throttle = MemoryLimiter()

    def state(self, client_id: str) -> _ClientState:
        with self._lock:
            return self._states.setdefault(client_id, _ClientState(distances=deque(maxlen=self.settings.prada_window)))

    def admit(self, client: Client, n_inputs: int) -> None:
        """Before the model runs: hold a flagged client to the throttle rate (:class:`ThrottledError`, HTTP 429)."""
        s = self.settings
        state = self.state(client.id)
        if s.throttle_rate is not None and state.alerted:
            try:
                self._throttle.charge(client.id, n_inputs, Allowance(s.throttle_rate, s.throttle_burst))
            except RateLimitedError as exc:
                raise ThrottledError(f"client {client.name} is throttled to {s.throttle_rate:g} queries/s after a "
                                     f"stealing alert ({', '.join(sorted(state.alerted))})", exc.retry_after) from exc

    def __call__(self, client: Client, inputs: np.ndarray, answers: Answers) -> Answers:
        state = self.state(client.id)
        with state.lock:
            if state.client is None:
                state.client, state.created = client, created_seconds(client.created)
            self._observe(client, state, np.asarray(inputs, dtype=np.float32), np.asarray(answers.labels, dtype=np.int64),
                          np.asarray(answers.probabilities).shape[1] if answers.probabilities is not None else int(answers.labels.max()) + 1)
            due = state.queries - state.last_group_test >= self.settings.test_every
            if due:
                state.last_group_test = state.queries
        if due:
            self._check_group(state)
        return answers

    def _check_group(self, state: _ClientState) -> None:
        """The coalition signal for one client (see the module docstring); takes each client's lock in turn."""
        s = self.settings
        if s.coalition_window_s is None or s.coalition_volume is None or state.created is None:
            return
        now = self.clock()
        with self._lock:
            others = list(self._states.values())
        snaps = {}
        for other in others:
            if other.created is None or abs(other.created - state.created) > s.coalition_window_s:
                continue
            with other.lock:
                if other.counts is None or other.client is None:
                    continue
                recent = sum(n for t, n in other.recent if t >= now - s.volume_window_s)
                snaps[id(other)] = (other, other.client, other.queries, other.counts.copy(), recent)
        me = snaps.get(id(state))
        if me is None or me[2] < s.coalition_min_queries:
            return
        mix = me[3] / me[3].sum()
        group = [me] + [snap for key, snap in snaps.items() if key != id(state) and snap[2] >= s.coalition_min_queries
                        and max(snap[2], me[2]) <= s.coalition_ratio * min(snap[2], me[2])
                        and len(snap[3]) == len(mix) and 0.5 * float(np.abs(snap[3] / snap[3].sum() - mix).sum()) <= s.coalition_tv]
        volume = sum(snap[4] for snap in group)
        if len(group) < 2 or volume <= s.coalition_volume:
            return
        names = ",".join(snap[1].name for snap in group)
        for other, client, _, _, _ in group:
            with other.lock:
                if "coalition" in other.alerted:
                    continue
                self._alert(client, other, "coalition", volume, s.coalition_volume, names)

    def _observe(self, client: Client, state: _ClientState, x: np.ndarray, labels: np.ndarray, k: int) -> None:
        s = self.settings
        flat = x.reshape(len(x), -1).astype(np.float32)
        if state.counts is None:
            state.counts = np.zeros(k, np.int64)
        np.add.at(state.counts, labels, 1)
        now = self.clock()
        state.recent.append((now, len(x)))
        while state.recent and state.recent[0][0] < now - s.volume_window_s:
            state.recent.popleft()
        if s.prada_delta is not None:
            for v, c in zip(flat, labels):
                self._prada_step(state, v, int(c))
        state.queries += len(x)
        if s.prada_delta is not None and "prada" not in state.alerted and len(state.distances) >= s.prada_min_queries \
                and state.queries - state.last_test >= s.test_every:
            state.last_test = state.queries
            from scipy import stats

            w = float(stats.shapiro(np.fromiter(state.distances, float)).statistic)
            if w < s.prada_delta:
                self._alert(client, state, "prada", w, s.prada_delta)
        if s.volume is not None and "volume" not in state.alerted:
            volume = sum(n for _, n in state.recent)
            if volume > s.volume:
                self._alert(client, state, "volume", volume, s.volume)
        if s.coverage_tv is not None and "coverage" not in state.alerted and state.queries >= s.coverage_min_queries:
            prior = np.asarray(s.prior, float) if s.prior is not None else np.full(k, 1.0 / k)
            if len(prior) == k:
                tv = 0.5 * float(np.abs(state.counts / state.counts.sum() - prior).sum())
                if tv > s.coverage_tv:
                    self._alert(client, state, "coverage", tv, s.coverage_tv)

    def _prada_step(self, state: _ClientState, v: np.ndarray, c: int) -> None:
        key = hash((c, v.tobytes()))
        if key in state.seen:
            return
        state.seen[key] = None
        if len(state.seen) > self.settings.prada_window:  # forget the oldest, as its distance has left the window
            del state.seen[next(iter(state.seen))]
        hist = state.history.get(c)
        norm = float(v @ v)
        if hist is None:
            start = min(64, self.settings.max_history)
            hist = state.history[c] = _ClassHistory(np.empty((start, v.size), np.float32), np.empty(start, np.float64))
        if hist.size == 0:
            hist.vectors[0], hist.norms[0], hist.size = v, norm, 1
            return
        sq = hist.norms[: hist.size] + norm - 2.0 * (hist.vectors[: hist.size] @ v)
        d = float(np.sqrt(max(float(sq.min()), 0.0)))
        if d == 0.0:  # an exact repeat of a reference input asked long ago
            return
        state.distances.append(d)
        admitted = hist.distances
        threshold = float(np.mean(admitted) - np.std(admitted)) if admitted else 0.0
        if d > threshold and hist.size < self.settings.max_history:
            if hist.size == len(hist.norms):  # grow by doubling, up to max_history
                grown = min(2 * hist.size, self.settings.max_history)
                hist.vectors = np.concatenate([hist.vectors, np.empty((grown - hist.size, v.size), np.float32)])
                hist.norms = np.concatenate([hist.norms, np.empty(grown - hist.size, np.float64)])
            hist.vectors[hist.size], hist.norms[hist.size] = v, norm
            hist.size += 1
            admitted.append(d)

    def _alert(self, client: Client, state: _ClientState, signal: Signal, value: float, threshold: float,
               group: str | None = None) -> None:
        state.alerted.add(signal)
        alert = Alert(utc_now(), client.id, client.name, signal, state.queries, float(value), float(threshold), group=group)
        if self.ledger is not None:
            try:
                entry = self.ledger.append(ALERT_EVENT, {k: v for k, v in alert.to_dict().items()
                                                         if k != "ledger_seq" and (k != "group" or v is not None)})
                alert = Alert(**{**alert.to_dict(), "ledger_seq": entry.seq})
            except (TracemarkError, OSError) as exc:  # an alert must not cost the client its answer
                _log.warning("stealing alert %s for %s not recorded in the ledger: %s", signal, client.name, exc)
        self.raised.append(alert)
        if self.alerts is not None:
            self.alerts.add(alert)


def created_seconds(created: str) -> float | None:
    """A client's ``created`` time (ISO 8601, as the client store writes it) in epoch seconds; ``None`` if unreadable."""
    try:
        when = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return when.timestamp() if when.tzinfo is not None else None


__all__ = ["Alert", "AlertStore", "MonitorSettings", "StealingMonitor", "SIGNALS", "ALERT_EVENT", "created_seconds"]
