"""Extraction resistance (capability 6): per-client response marking, clone attribution, a stealing monitor.

* :class:`ResponseMarker` — an answer hook of the server: a keyed, input-determined wrong label for a
  small fraction of each client's inputs (DAWN), kept as evidence in a :class:`ResponseStore`; a
  :class:`MarkingProfile` marks inputs unlike the model's own data more often than typical ones.
* :func:`check_clone` — ask a suspect (model, file or URL) each client's marked inputs and name the
  clients whose answers it learned from, with exact p-values; a :class:`Coalition` names a thief's several keys
  from their pooled marks.
* :class:`StealingMonitor` — PRADA, volume and class-coverage signals per client; alerts in SQLite and
  the ledger; optional throttling.

Guide: docs/guide/extraction.md. Names are imported on first use.
"""

from __future__ import annotations

from tracemark._util.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "CloneCheck": "tracemark.extraction.clones",
    "ClientEvidence": "tracemark.extraction.clones",
    "check_clone": "tracemark.extraction.clones",
    "Coalition": "tracemark.extraction.coalitions",
    "find_coalition": "tracemark.extraction.coalitions",
    "ExtractionError": "tracemark.extraction.errors",
    "MarkingSecretError": "tracemark.extraction.errors",
    "MarkingWriteError": "tracemark.extraction.errors",
    "MarkingProfileError": "tracemark.extraction.errors",
    "MonitorConfigError": "tracemark.extraction.errors",
    "NoMarkedResponsesError": "tracemark.extraction.errors",
    "ResponseStoreError": "tracemark.extraction.errors",
    "ThrottledError": "tracemark.extraction.errors",
    "DEFAULT_RATE": "tracemark.extraction.settings",
    "DEFAULT_CAP": "tracemark.extraction.settings",
    "MarkingSecret": "tracemark.extraction.marking",
    "ResponseMarker": "tracemark.extraction.marking",
    "MarkingProfile": "tracemark.extraction.profile",
    "canonical_bytes": "tracemark.extraction.marking",
    "Alert": "tracemark.extraction.monitor",
    "AlertStore": "tracemark.extraction.monitor",
    "StealingMonitor": "tracemark.extraction.monitor",
    "HookChain": "tracemark.extraction.serving",
    "hook_from_config": "tracemark.extraction.serving",
    "MonitorSettings": "tracemark.extraction.settings",
    "MarkedSet": "tracemark.extraction.store",
    "ResponseStore": "tracemark.extraction.store",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
