"""Passphrase sealing shared by secret files: scrypt derives a 256-bit key, AES-256-GCM seals the body.

The ``encryption`` header (KDF, its parameters, salt, cipher, nonce) travels in the file in the
clear and is bound into the tag through the associated data the caller gives, so editing any
parameter is detected. Parameters read back are bounded by :mod:`tracemark.trust.kdf` before any
work is done. Used by watermark key files (docs/formats/key.md) and the owner key
(docs/formats/ledger.md).
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from tracemark.errors import FormatVersionError, KeyFileError, WrongPassphraseError

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
"""scrypt cost of new files: 32 MiB of memory, about 0.1 s."""


def parse_document(raw: bytes, source: str, fmt: str, version: int, what: str) -> dict[str, Any]:
    """The JSON object of a secret file, once its ``format`` and ``version`` fields match (else a named error)."""
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeyFileError(f"{source}: not a {what} (corrupt or truncated: {exc})") from exc
    if not isinstance(document, dict) or document.get("format") != fmt:
        raise KeyFileError(f"{source}: not a {what} (format field is missing or wrong)")
    if document.get("version") != version:
        raise FormatVersionError(f"{source}: {what} format version {document.get('version')!r}; this release reads {version}")
    return document


def derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    """The 32-byte AES key scrypt derives from ``passphrase``."""
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def new_encryption() -> dict[str, Any]:
    """A fresh ``encryption`` header: scrypt parameters, a random salt and nonce."""
    return {
        "kdf": "scrypt",
        "n": SCRYPT_N,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": base64.b64encode(os.urandom(16)).decode(),
        "cipher": "AES-256-GCM",
        "nonce": base64.b64encode(os.urandom(12)).decode(),
    }


def seal(plaintext: bytes, passphrase: str, encryption: dict[str, Any], aad: bytes) -> str:
    """Base64 AES-256-GCM ciphertext of ``plaintext`` under the key ``encryption`` derives from ``passphrase``."""
    if not passphrase:
        raise ValueError("an empty passphrase protects nothing")
    salt = base64.b64decode(encryption["salt"])
    nonce = base64.b64decode(encryption["nonce"])
    key = derive(passphrase, salt, encryption["n"], encryption["r"], encryption["p"])
    return base64.b64encode(AESGCM(key).encrypt(nonce, plaintext, aad)).decode()


def unseal(ciphertext: Any, passphrase: str, encryption: Any, aad: bytes, what: str) -> bytes:
    """Open what :func:`seal` made; :class:`KeyFileError` if the header is malformed or out of bounds,
    :class:`WrongPassphraseError` if the passphrase is wrong or the file was altered."""
    from tracemark.trust.kdf import SALT_MAX, SALT_MIN, bounded_b64, check_scrypt

    if not isinstance(encryption, dict) or encryption.get("kdf") != "scrypt" or encryption.get("cipher") != "AES-256-GCM":
        raise KeyFileError(f"{what}: unknown encryption (this release reads scrypt + AES-256-GCM)")
    n, r, p = check_scrypt(encryption.get("n"), encryption.get("r"), encryption.get("p"), what, KeyFileError)
    salt = bounded_b64(encryption.get("salt"), f"{what}: salt", (SALT_MIN, SALT_MAX), KeyFileError)
    nonce = bounded_b64(encryption.get("nonce"), f"{what}: nonce", (12, 12), KeyFileError)
    if not isinstance(ciphertext, str):
        raise KeyFileError(f"{what}: the ciphertext is missing")
    try:
        sealed = base64.b64decode(ciphertext.encode("ascii"), validate=True)
    except (UnicodeEncodeError, ValueError) as exc:
        raise KeyFileError(f"{what}: the ciphertext is not base64") from exc
    try:
        return AESGCM(derive(passphrase, salt, n, r, p)).decrypt(nonce, sealed, aad)
    except InvalidTag as exc:
        raise WrongPassphraseError(f"{what}: wrong passphrase, or the encrypted file was altered") from exc
