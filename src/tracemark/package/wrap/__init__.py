"""Key-wrapping stanzas: passphrase, recipient (X25519), TPM 2.0 and machine secret.

A *wrap* (build side) turns the package's data key into a stanza; an *unlocker* (load side)
turns a stanza of its kind back into the data key, or raises an error naming why not.
"""

from __future__ import annotations

from typing import Protocol

from tracemark.package.wrap.machine import MachineSecret, MachineWrap
from tracemark.package.wrap.passphrase import Passphrase, PassphraseWrap
from tracemark.package.wrap.recipient import RecipientKey, RecipientWrap
from tracemark.package.wrap.tpm import TpmDevice, TpmWrap, enrol_tpm


class Wrap(Protocol):
    """Build side: makes one stanza for the data key."""

    kind: str

    def stanza(self, data_key: bytes, core_digest: bytes) -> dict: ...

    def describe(self) -> str: ...


class Unlocker(Protocol):
    """Load side: opens stanzas of its kind."""

    kind: str

    def unwrap(self, stanza: dict, core_digest: bytes) -> bytes: ...


__all__ = [
    "Wrap",
    "Unlocker",
    "PassphraseWrap",
    "Passphrase",
    "RecipientWrap",
    "RecipientKey",
    "MachineWrap",
    "MachineSecret",
    "TpmWrap",
    "TpmDevice",
    "enrol_tpm",
]
