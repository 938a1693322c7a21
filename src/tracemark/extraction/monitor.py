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

Signal = Literal["prada", "volume", "coverage"]
SIGNALS: tuple[Signal, ...] = ("prada", "volume", "coverage")
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
    ledger_seq INTEGER
);
CREATE INDEX IF NOT EXISTS extraction_alerts_client ON extraction_alerts (client_id, time);
"""


@dataclass(frozen=True)
class Alert:
    """One alert: which client, which signal, after how many of its queries, the value and the threshold."""

    time: str
    client_id: str
    client_name: str
    signal: str
    queries: int
    value: float
    threshold: float
    ledger_seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        ledger = f" (ledger #{self.ledger_seq})" if self.ledger_seq is not None else ""
        return (f"{self.time} {self.client_name} ({self.client_id}): {self.signal} after {self.queries} queries, "
                f"value {self.value:.4g} vs threshold {self.threshold:.4g}{ledger}")


class AlertStore:
    """Monitor alerts in their own table of a SQLite file (by default the server's audit log)."""

    def __init__(self, path: str) -> None:
        self.db = SqliteFile(path, _SCHEMA)

    def add(self, alert: Alert) -> None:
        with self.db.write() as conn:
            conn.execute("INSERT INTO extraction_alerts (time, client_id, client_name, signal, queries, value, threshold, ledger_seq)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (alert.time, alert.client_id, alert.client_name, alert.signal,
                                                               alert.queries, alert.value, alert.threshold, alert.ledger_seq))

    def list(self, client_id: str | None = None) -> list[Alert]:
        """Alerts, oldest first (one client's when ``client_id`` is given)."""
        sql = "SELECT time, client_id, client_name, signal, queries, value, threshold, ledger_seq FROM extraction_alerts"
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
    """What the monitor remembers of one client: counts, PRADA's sets and distances, recent volume, alerts raised."""

    queries: int = 0
    counts: np.ndarray | None = None
    history: dict[int, _ClassHistory] = field(default_factory=dict)
    distances: deque = field(default_factory=deque)
    seen: dict[int, None] = field(default_factory=dict)
    recent: deque = field(default_factory=deque)
    alerted: set = field(default_factory=set)
    last_test: int = 0
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
            self._observe(client, state, np.asarray(inputs, dtype=np.float32), np.asarray(answers.labels, dtype=np.int64),
                          np.asarray(answers.probabilities).shape[1] if answers.probabilities is not None else int(answers.labels.max()) + 1)
        return answers

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

    def _alert(self, client: Client, state: _ClientState, signal: Signal, value: float, threshold: float) -> None:
        state.alerted.add(signal)
        alert = Alert(utc_now(), client.id, client.name, signal, state.queries, float(value), float(threshold))
        if self.ledger is not None:
            try:
                entry = self.ledger.append(ALERT_EVENT, {k: v for k, v in alert.to_dict().items() if k != "ledger_seq"})
                alert = Alert(**{**alert.to_dict(), "ledger_seq": entry.seq})
            except (TracemarkError, OSError) as exc:  # an alert must not cost the client its answer
                _log.warning("stealing alert %s for %s not recorded in the ledger: %s", signal, client.name, exc)
        self.raised.append(alert)
        if self.alerts is not None:
            self.alerts.add(alert)


__all__ = ["Alert", "AlertStore", "MonitorSettings", "StealingMonitor", "SIGNALS", "ALERT_EVENT"]
