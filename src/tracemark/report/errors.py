"""Errors of the ownership report (all under :class:`~tracemark.errors.TracemarkError`)."""

from __future__ import annotations

from tracemark.errors import TamperedError, TracemarkError


class ReportError(TracemarkError):
    """An input of the report is unusable: unreadable JSON, a verdict for another key than the bundle's, a missing authority."""


class ReportSignatureError(ReportError, TamperedError):
    """A signed report does not verify: altered, signed by another key, not time-stamped, or its hashes disagree with the bundle."""
