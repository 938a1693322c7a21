"""Prometheus metrics in the text exposition format (version 0.0.4), kept per worker process."""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections import defaultdict

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}" if pairs else ""


class Metrics:
    """Counters and a request-latency histogram; :meth:`render` gives the Prometheus text.

    With several workers each process counts its own traffic (label ``pid``); the audit log is
    the exact, shared count of answered queries.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self._buckets: dict[str, list[int]] = {}
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self._started = time.time()

    def count(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add ``value`` to counter ``name`` with ``labels``."""
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counters[key] += value

    def observe(self, path: str, seconds: float) -> None:
        """Record one request's latency for ``path``."""
        with self._lock:
            buckets = self._buckets.setdefault(path, [0] * (len(LATENCY_BUCKETS) + 1))
            buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self._sums[path] += seconds
            self._counts[path] += 1

    def render(self, detail: bool = True) -> str:
        """The metrics as Prometheus text. ``detail=False`` (what /metrics shows without an admin token) sums the
        counters over clients and drops the worker's ``pid`` label: no client names, no per-client counts, no PID."""
        pid = (("pid", str(os.getpid())),) if detail else ()
        lines = [
            "# HELP tracemark_process_start_time_seconds Start time of this worker process (Unix time).",
            "# TYPE tracemark_process_start_time_seconds gauge",
            f"tracemark_process_start_time_seconds{_labels(pid)} {self._started:.3f}",
        ]
        with self._lock:
            counters = dict(self._counters)
            buckets = {k: list(v) for k, v in self._buckets.items()}
            sums, counts = dict(self._sums), dict(self._counts)
        if not detail:
            counters = _without(counters, "client")
        helps = {
            "tracemark_http_requests_total": "HTTP requests by path and status.",
            "tracemark_queries_answered_total": "Inputs answered, by client." if detail else "Inputs answered.",
            "tracemark_requests_refused_total": "Requests refused, by reason.",
            "tracemark_images_decoded_total": "Uploaded images decoded (after admission).",
        }
        for name, help_text in helps.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            for (metric, labels), value in sorted(counters.items()):
                if metric == name:
                    lines.append(f"{name}{_labels(labels + pid)} {value:g}")
        name = "tracemark_http_request_duration_seconds"
        lines += [f"# HELP {name} Request latency by path.", f"# TYPE {name} histogram"]
        for path, counts_per_bucket in sorted(buckets.items()):
            cumulative = 0
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), counts_per_bucket):
                cumulative += n
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                lines.append(f"{name}_bucket{_labels((('path', path), *pid, ('le', le)))} {cumulative}")
            lines.append(f"{name}_sum{_labels((('path', path), *pid))} {sums[path]:.6f}")
            lines.append(f"{name}_count{_labels((('path', path), *pid))} {counts[path]}")
        return "\n".join(lines) + "\n"


def _without(counters: dict[tuple[str, tuple[tuple[str, str], ...]], float], label: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``counters`` summed over the values of ``label``."""
    summed: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
    for (name, labels), value in counters.items():
        summed[(name, tuple(pair for pair in labels if pair[0] != label))] += value
    return dict(summed)


__all__ = ["Metrics", "CONTENT_TYPE", "LATENCY_BUCKETS"]
