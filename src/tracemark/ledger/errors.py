"""Finer-grained names for ledger, time-stamp and bundle failures (all under tracemark.errors)."""

from __future__ import annotations

from tracemark.errors import BundleError, ChainBrokenError, LedgerError, TamperedError, TimestampError


class MalformedEntryError(ChainBrokenError):
    """A ledger line is not a well-formed, canonically encoded entry (a byte was changed or inserted)."""


class MalformedPayloadError(MalformedEntryError):
    """A correctly signed entry's payload lacks a field or has one of the wrong type or length."""


class RollbackError(ChainBrokenError):
    """A witness (time-stamp token, exported bundle, saved head) saw entries the ledger no longer has."""


class WitnessError(LedgerError):
    """A witness file cannot be used: unreadable, of another ledger, or not signed by the ledger's owner."""


class EntryTamperedError(ChainBrokenError):
    """An entry's content does not match its recorded hash: it was edited."""


class SequenceError(ChainBrokenError):
    """Entries are out of order, missing, or do not link to their predecessor (dropped or reordered)."""


class TruncatedLedgerError(ChainBrokenError):
    """The ledger ends before the signed head says it does: entries were cut off the end."""


class HeadError(ChainBrokenError):
    """The ledger's signed head file is malformed or disagrees with the ledger."""


class TornTailError(LedgerError):
    """The ledger ends in an incomplete line (an append was interrupted)."""


class ImprintMismatchError(TimestampError):
    """A time-stamp token covers different data than the entries it claims to time-stamp."""


class UntrustedAuthorityError(TimestampError):
    """A token's signature does not chain to a trusted authority certificate."""


class UnpinnedAuthorityError(UntrustedAuthorityError):
    """Tokens were to be checked but no authority is pinned, and the caller did not opt in to any authority."""


class AuthorityCertificateExpiredError(TimestampError):
    """The authority's certificate was not valid at the time written in the token."""


class TokenTamperedError(TimestampError, TamperedError):
    """A stored token file was altered (its hash differs from the one the ledger recorded)."""


class AttachmentTamperedError(LedgerError, TamperedError):
    """A stored attachment (verdict, transcript, report) no longer matches the hash its entry recorded."""


class BundleMemberError(BundleError, TamperedError):
    """A bundle member is missing, unexpected, or differs from the signed manifest."""


class LineageRevealError(BundleError):
    """A revealed lineage fingerprint is unreadable, not committed in the ledger, or differs from what was committed."""


class KeyRevealError(BundleError):
    """The revealed watermark key does not match the commitment recorded in the ledger."""


class LegacyOwnerKeyWarning(UserWarning):
    """The owner key is a PKCS#8 PEM with weak PBKDF2 protection; re-encrypt it with ``tracemark ledger rekey``."""


__all__ = [
    "AttachmentTamperedError",
    "AuthorityCertificateExpiredError",
    "BundleMemberError",
    "EntryTamperedError",
    "HeadError",
    "ImprintMismatchError",
    "KeyRevealError",
    "LineageRevealError",
    "LegacyOwnerKeyWarning",
    "MalformedEntryError",
    "MalformedPayloadError",
    "RollbackError",
    "WitnessError",
    "SequenceError",
    "TokenTamperedError",
    "TornTailError",
    "TruncatedLedgerError",
    "UntrustedAuthorityError",
    "UnpinnedAuthorityError",
]
