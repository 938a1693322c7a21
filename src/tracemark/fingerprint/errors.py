"""Errors of per-customer fingerprinting and leak tracing."""

from __future__ import annotations

from tracemark.errors import TracemarkError


class FingerprintError(TracemarkError):
    """A fingerprint scheme cannot be built from this key or these data."""


class CustomersFileError(FingerprintError):
    """A customers file is missing, empty, or holds an invalid or repeated customer id."""


class RegistryError(FingerprintError):
    """A customer registry cannot be read or written (missing, corrupt, or of another format)."""


class DuplicateCustomerError(RegistryError):
    """A customer id is already in the registry; each customer gets exactly one code."""


class RegistryKeyMismatchError(RegistryError):
    """The registry was made with a different master key or scheme than the one given."""


class CodeGoalWarning(UserWarning):
    """A customer copy did not reach its code goal within the clean-accuracy budget (it keeps less of the code)."""
