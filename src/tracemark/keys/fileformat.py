"""The key file: versioned JSON, optionally sealed with scrypt + AES-256-GCM.

See docs/formats/key.md for the layout. Reading checks the format version, the
authentication tag (encrypted files) and the commitment (every file), so a corrupt,
truncated or edited key is refused with a named error instead of yielding other triggers.
"""

from __future__ import annotations

import json
from pathlib import Path

from tracemark._util import sealed
from tracemark._util.canonical import canonical_json
from tracemark._util.files import atomic_write_bytes
from tracemark.errors import KeyFileError, TamperedError, WrongPassphraseError
from tracemark.keys.key import WatermarkKey

FORMAT = "tracemark-key"
VERSION = 1


def encode_key_file(key: WatermarkKey, passphrase: str | None = None) -> bytes:
    """The bytes of a key file for ``key``."""
    header = {"format": FORMAT, "version": VERSION, "commitment": key.commitment()}
    body = canonical_json(key.to_body())
    if passphrase is None:
        document = {**header, "encryption": None, "key": key.to_body()}
        return json.dumps(document, sort_keys=True, indent=1).encode("utf-8") + b"\n"
    if not passphrase:
        raise ValueError("an empty passphrase protects nothing; pass None for an unencrypted key")
    header = {**header, "encryption": sealed.new_encryption()}
    document = {**header, "ciphertext": sealed.seal(body, passphrase, header["encryption"], canonical_json(header))}
    return json.dumps(document, sort_keys=True, indent=1).encode("utf-8") + b"\n"


def write_key_file(key: WatermarkKey, path: str | Path, passphrase: str | None = None) -> Path:
    """Write ``key`` to ``path`` atomically with owner-only permissions."""
    return atomic_write_bytes(path, encode_key_file(key, passphrase), mode=0o600)


def is_encrypted(path: str | Path) -> bool:
    """Whether the key file at ``path`` needs a passphrase."""
    return _parse(Path(path).read_bytes(), str(path)).get("encryption") is not None


def _parse(raw: bytes, source: str) -> dict:
    return sealed.parse_document(raw, source, FORMAT, VERSION, "tracemark key file")


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
        header = {k: document.get(k) for k in ("format", "version", "commitment", "encryption")}
        plaintext = sealed.unseal(document.get("ciphertext"), passphrase, encryption, canonical_json(header), source)
        try:
            body = json.loads(plaintext)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise KeyFileError(f"{source}: the decrypted key body is not JSON") from exc
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
