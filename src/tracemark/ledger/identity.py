"""The owner's identity: an Ed25519 key pair, private half in a passphrase-sealed JSON file.

The file (docs/formats/ledger.md) seals the 32 raw private-key bytes with scrypt + AES-256-GCM,
like watermark key files. Owner keys written by earlier releases (encrypted PKCS#8 PEM, PBKDF2
with 2,048 iterations) are still read, with a :class:`LegacyOwnerKeyWarning`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tracemark._util import sealed
from tracemark._util.canonical import canonical_json, sha256_hex
from tracemark._util.files import atomic_write_bytes
from tracemark.errors import KeyFileError, SignatureError, WrongPassphraseError
from tracemark.ledger.errors import LegacyOwnerKeyWarning

FORMAT = "tracemark-owner-key"
VERSION = 1
_HEADER_FIELDS = ("format", "version", "algorithm", "public_key", "encryption")


def public_key_hex(public_key: Ed25519PublicKey) -> str:
    """The 32 raw public-key bytes, hex."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """Owner fingerprint: hex SHA-256 of the raw public key."""
    return sha256_hex(bytes.fromhex(public_key_hex(public_key)))


def public_key_from_hex(text: str) -> Ed25519PublicKey:
    """Inverse of :func:`public_key_hex`; raises :class:`KeyFileError` on bad input."""
    try:
        raw = bytes.fromhex(text)
        if raw.hex() != text or len(raw) != 32:
            raise ValueError("not 32 lower-case hex bytes")
        return Ed25519PublicKey.from_public_bytes(raw)
    except (TypeError, ValueError) as exc:
        raise KeyFileError(f"not an Ed25519 public key ({exc})") from exc


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    """PEM (SubjectPublicKeyInfo) of a public key."""
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Read an owner's public key PEM; raises :class:`KeyFileError` if it is not an Ed25519 key."""
    path = Path(path)
    if not path.is_file():
        raise KeyFileError(f"no public key file at {path}")
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 public key")
    return key


def verify_signature(public_key: Ed25519PublicKey, signature: bytes, data: bytes, what: str) -> None:
    """Raise :class:`SignatureError` naming ``what`` unless ``signature`` is the owner's over ``data``."""
    try:
        public_key.verify(signature, data)
    except InvalidSignature as exc:
        raise SignatureError(f"{what}: the owner's signature does not verify; the content was altered or signed by someone else") from exc


@dataclass(frozen=True, eq=False)
class OwnerIdentity:
    """An owner's Ed25519 signing key. Create with :meth:`generate`, keep with :meth:`save`."""

    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> "OwnerIdentity":
        """A fresh key pair."""
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The public half."""
        return self.private_key.public_key()

    def fingerprint(self) -> str:
        """Hex SHA-256 of the raw public key."""
        return fingerprint(self.public_key)

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature over ``data``."""
        return self.private_key.sign(data)

    def save(self, path: str | Path, passphrase: str) -> Path:
        """Write the private key sealed under ``passphrase`` (owner-only) and ``<path>.pub.pem`` beside it."""
        if not passphrase:
            raise ValueError("the owner key must be protected by a non-empty passphrase")
        header = {"format": FORMAT, "version": VERSION, "algorithm": "Ed25519",
                  "public_key": public_key_hex(self.public_key), "encryption": sealed.new_encryption()}
        raw = self.private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                             serialization.NoEncryption())
        document = {**header, "ciphertext": sealed.seal(raw, passphrase, header["encryption"], canonical_json(header))}
        path = atomic_write_bytes(path, json.dumps(document, indent=1, sort_keys=True).encode("utf-8") + b"\n", mode=0o600)
        atomic_write_bytes(Path(f"{path}.pub.pem"), public_key_pem(self.public_key), mode=0o644)
        return path

    @classmethod
    def load(cls, path: str | Path, passphrase: str) -> "OwnerIdentity":
        """Read an owner key file (or a legacy encrypted PEM). Raises KeyFileError or WrongPassphraseError."""
        path = Path(path)
        if not path.is_file():
            raise KeyFileError(f"no owner key file at {path}; create one with `tracemark ledger init`")
        raw = path.read_bytes()
        if raw.lstrip().startswith(b"-----BEGIN"):
            return cls(_load_legacy_pem(path, raw, passphrase))
        document = sealed.parse_document(raw, str(path), FORMAT, VERSION, "owner key file")
        if not passphrase:
            raise WrongPassphraseError(f"{path}: give the passphrase that protects this owner key")
        header = {k: document.get(k) for k in _HEADER_FIELDS}
        secret = sealed.unseal(document.get("ciphertext"), passphrase, document.get("encryption"), canonical_json(header),
                               f"{path} (owner key)")
        if len(secret) != 32:
            raise KeyFileError(f"{path}: the sealed owner key is not 32 bytes")
        key = Ed25519PrivateKey.from_private_bytes(secret)
        if public_key_hex(key.public_key()) != document.get("public_key"):
            raise KeyFileError(f"{path}: the sealed private key does not match the recorded public key")
        return cls(key)

    def __str__(self) -> str:
        return f"OwnerIdentity Ed25519 {self.fingerprint()[:16]}…"


def _load_legacy_pem(path: Path, raw: bytes, passphrase: str) -> Ed25519PrivateKey:
    """An owner key written by releases before the scrypt file: an encrypted PKCS#8 PEM (PBKDF2, 2,048 rounds)."""
    try:
        key = serialization.load_pem_private_key(raw, password=passphrase.encode("utf-8") if passphrase else None)
    except TypeError as exc:  # encrypted without a passphrase, or plain with one
        raise WrongPassphraseError(f"{path}: give the passphrase that protects this owner key") from exc
    except ValueError as exc:
        if b"ENCRYPTED" in raw:
            raise WrongPassphraseError(f"{path}: wrong passphrase for the owner key") from exc
        raise KeyFileError(f"{path}: not a PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key")
    warnings.warn(f"{path}: this owner key is protected only by PBKDF2 with 2,048 rounds; "
                  f"re-encrypt it with scrypt: tracemark ledger rekey --owner-key {path}", LegacyOwnerKeyWarning, stacklevel=3)
    return key
