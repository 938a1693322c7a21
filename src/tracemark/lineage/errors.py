"""Errors of the lineage fingerprint, its reference pool and its file."""

from __future__ import annotations

from tracemark.errors import TracemarkError


class LineageError(TracemarkError):
    """A lineage fingerprint cannot be generated, calibrated or tested with what it was given."""


class PoolError(LineageError):
    """A reference pool cannot be built or read (its manifest or a cached model is missing, altered or mixed up)."""


class LineageFileError(LineageError):
    """A lineage file is missing, malformed, of another format, or over the size and shape bounds."""
