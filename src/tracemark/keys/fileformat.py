"""The key file: versioned JSON, optionally sealed with scrypt + AES-256-GCM.

See docs/formats/key.md for the layout. Reading checks the format version, the
authentication tag (encrypted files) and the commitment (every file), so a corrupt,
truncated or edited key is refused with a named error instead of yielding other triggers.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from tracemark._util.canonical import canonical_json
from tracemark._util.files import atomic_write_bytes
from tracemark.errors import FormatVersionError, KeyFileError, TamperedError, WrongPassphraseError
from tracemark.keys.key import WatermarkKey

FORMAT = "tracemark-key"
VERSION = 1
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1


def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def encode_key_file(key: WatermarkKey, passphrase: str | None = None) -> bytes:
    """The bytes of a key file for ``key``."""
    header = {"format": FORMAT, "version": VERSION, "commitment": key.commitment()}
    body = canonical_json(key.to_body())
    if passphrase is None:
        document = {**header, "encryption": None, "key": key.to_body()}
        return json.dumps(document, sort_keys=True, indent=1).encode("utf-8") + b"\n"
    if not passphrase:
        raise ValueError("an empty passphrase protects nothing; pass None for an unencrypted key")
    salt, nonce = os.urandom(16), os.urandom(12)
    encryption = {
        "kdf": "scrypt",
        "n": SCRYPT_N,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": base64.b64encode(salt).decode(),
        "cipher": "AES-256-GCM",
        "nonce": base64.b64encode(nonce).decode(),
    }
    header = {**header, "encryption": encryption}
    data_key = _derive(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    ciphertext = AESGCM(data_key).encrypt(nonce, body, canonical_json(header))
    document = {**header, "ciphertext": base64.b64encode(ciphertext).decode()}
    return json.dumps(document, sort_keys=True, indent=1).encode("utf-8") + b"\n"


def write_key_file(key: WatermarkKey, path: str | Path, passphrase: str | None = None) -> Path:
    """Write ``key`` to ``path`` atomically with owner-only permissions."""
    return atomic_write_bytes(path, encode_key_file(key, passphrase), mode=0o600)


def is_encrypted(path: str | Path) -> bool:
    """Whether the key file at ``path`` needs a passphrase."""
    return _parse(Path(path).read_bytes(), str(path)).get("encryption") is not None


def _parse(raw: bytes, source: str) -> dict:
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeyFileError(f"{source}: not a tracemark key file (corrupt or truncated: {exc})") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise KeyFileError(f"{source}: not a tracemark key file (format field is missing or wrong)")
    if document.get("version") != VERSION:
        raise FormatVersionError(f"{source}: key format version {document.get('version')!r}; this release reads {VERSION}")
    return document


def decode_key_file(raw: bytes, passphrase: str | None = None, source: str = "<key>") -> WatermarkKey:
    """Parse key-file bytes; see :func:`read_key_file`."""
    document = _parse(raw, source)
    encryption = document.get("encryption")
    if encryption is None:
        body = document.get("key")
        if not isinstance(body, dict):
            raise KeyFileError(f"{source}: key file has no key body")
    else:
        if passphrase is None:
            raise WrongPassphraseError(f"{source}: the key file is encrypted; give its passphrase")
        try:
            header = {k: document[k] for k in ("format", "version", "commitment", "encryption")}
            salt = base64.b64decode(encryption["salt"], validate=True)
            nonce = base64.b64decode(encryption["nonce"], validate=True)
            ciphertext = base64.b64decode(document["ciphertext"], validate=True)
            data_key = _derive(passphrase, salt, int(encryption["n"]), int(encryption["r"]), int(encryption["p"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyFileError(f"{source}: malformed encryption header ({exc})") from exc
        try:
            plaintext = AESGCM(data_key).decrypt(nonce, ciphertext, canonical_json(header))
        except InvalidTag as exc:
            raise WrongPassphraseError(
                f"{source}: wrong passphrase, or the encrypted key file was altered"
            ) from exc
        body = json.loads(plaintext)
    key = WatermarkKey.from_body(body)
    if key.commitment() != document.get("commitment"):
        raise TamperedError(f"{source}: key content does not match its recorded commitment; the file was altered")
    return key


def read_key_file(path: str | Path, passphrase: str | None = None) -> WatermarkKey:
    """Read and check a key file. Raises KeyFileError, WrongPassphraseError, TamperedError or FormatVersionError."""
    path = Path(path)
    if not path.is_file():
        raise KeyFileError(f"no key file at {path}")
    return decode_key_file(path.read_bytes(), passphrase, str(path))
