"""Errors of the robustness lab."""

from tracemark.errors import TracemarkError


class LabError(TracemarkError):
    """A robustness experiment cannot run as asked (unknown suite, unprofiled key, bad profile file)."""


class NullProfileError(LabError):
    """A null profile file is malformed, or does not cover the key it is asked about."""
