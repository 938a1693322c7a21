"""Errors of the evidence protocol and the combined verdict."""

from __future__ import annotations

from tracemark.errors import TracemarkError


class EvidenceError(TracemarkError):
    """Evidence cannot be combined or tested as given (no evidence, a bad first-seen time, not an Evidence)."""
