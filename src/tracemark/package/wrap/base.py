"""What every key-wrapping stanza shares: a key-encryption key (KEK) wraps the data key with AES-256-GCM.

Each method only differs in where its 32-byte KEK comes from (a passphrase, an X25519 agreement,
a TPM-sealed secret, a machine secret). The associated data binds the wrapped key to the
package's manifest core (everything but the stanzas), so a stanza cannot be moved to another
package and the licence cannot be edited without breaking the unwrap.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tracemark.errors import PackageError

WRAP_LABEL = b"tracemark-package/1 wrap\x00"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(stanza: dict, field: str) -> bytes:
    """Decode a base64 field of a stanza, or raise a :class:`PackageError` naming it."""
    try:
        return base64.b64decode(stanza[field], validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise PackageError(f"{stanza.get('type', '?')} stanza: field {field!r} missing or not base64") from exc


def wrap_aad(kind: str, core_digest: bytes) -> bytes:
    return WRAP_LABEL + kind.encode("ascii") + b"\x00" + core_digest


def seal(kind: str, kek: bytes, data_key: bytes, core_digest: bytes) -> dict:
    """The ``nonce`` and ``wrapped_key`` fields of a stanza of type ``kind``."""
    nonce = os.urandom(12)
    wrapped = AESGCM(kek).encrypt(nonce, data_key, wrap_aad(kind, core_digest))
    return {"type": kind, "nonce": b64(nonce), "wrapped_key": b64(wrapped)}


def open_sealed(stanza: dict, kek: bytes, core_digest: bytes) -> bytes | None:
    """The data key, or ``None`` if ``kek`` does not open this stanza (wrong secret or altered binding)."""
    try:
        return AESGCM(kek).decrypt(unb64(stanza, "nonce"), unb64(stanza, "wrapped_key"), wrap_aad(stanza["type"], core_digest))
    except InvalidTag:
        return None
