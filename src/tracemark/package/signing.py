"""Vendor keys: an Ed25519 key that signs packages and an X25519 key packages can be wrapped for.

Both live in one owner-only JSON file (``vendor.key``); the public halves in ``vendor.pub``,
which is what customers' loaders pin and what ``tracemark pack --recipient`` accepts.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from tracemark._util.canonical import sha256_hex
from tracemark._util.files import atomic_write_bytes
from tracemark.errors import PackageError
from tracemark.package.errors import PackageSignatureError

KEY_FORMAT = "tracemark-vendor-key"
PUB_FORMAT = "tracemark-vendor-public-key"
VERSION = 1
SIGNATURE_CONTEXT = b"tracemark-package/1 manifest\x00"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise PackageError(f"{what} is not valid base64") from exc


def raw_public(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    """The 32 raw bytes of a public key."""
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(ed25519_public: bytes) -> str:
    """Short public identifier of a signing key: the first 16 hex digits of its SHA-256."""
    return sha256_hex(ed25519_public)[:16]


def recipient_id(x25519_public: bytes) -> str:
    """Short public identifier of a recipient key (first 16 hex digits of its SHA-256)."""
    return sha256_hex(x25519_public)[:16]


@dataclass(frozen=True)
class VendorPublicKey:
    """The public halves of a vendor key: verifies package signatures; a wrapping recipient."""

    ed25519: Ed25519PublicKey
    x25519: X25519PublicKey

    @property
    def key_id(self) -> str:
        return key_id(raw_public(self.ed25519))

    def to_dict(self) -> dict:
        return {
            "format": PUB_FORMAT,
            "version": VERSION,
            "key_id": self.key_id,
            "ed25519": _b64(raw_public(self.ed25519)),
            "x25519": _b64(raw_public(self.x25519)),
        }

    def save(self, path: str | Path) -> Path:
        """Write the public key file (world-readable) atomically."""
        return atomic_write_bytes(path, json.dumps(self.to_dict(), indent=1).encode() + b"\n", mode=0o644)

    @classmethod
    def load(cls, path: str | Path) -> "VendorPublicKey":
        """Read a ``vendor.pub`` file (a ``vendor.key`` file is accepted too)."""
        raw = _read_json(path, (PUB_FORMAT, KEY_FORMAT))
        if raw["format"] == KEY_FORMAT:
            return VendorKey.from_dict(raw, str(path)).public
        try:
            return cls(
                Ed25519PublicKey.from_public_bytes(_unb64(raw["ed25519"], "ed25519 key")),
                X25519PublicKey.from_public_bytes(_unb64(raw["x25519"], "x25519 key")),
            )
        except (KeyError, ValueError) as exc:
            raise PackageError(f"{path}: malformed vendor public key ({exc})") from exc

    def __str__(self) -> str:
        return f"vendor public key {self.key_id}"


@dataclass(frozen=True)
class VendorKey:
    """A vendor's private signing (Ed25519) and recipient (X25519) keys."""

    ed25519: Ed25519PrivateKey
    x25519: X25519PrivateKey

    @classmethod
    def generate(cls) -> "VendorKey":
        """A fresh random vendor key."""
        return cls(Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @property
    def public(self) -> VendorPublicKey:
        return VendorPublicKey(self.ed25519.public_key(), self.x25519.public_key())

    def sign(self, manifest_bytes: bytes) -> bytes:
        """Ed25519 signature over the canonical manifest bytes (with a domain-separation prefix)."""
        return self.ed25519.sign(SIGNATURE_CONTEXT + manifest_bytes)

    def to_dict(self) -> dict:
        raw = lambda k: k.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())  # noqa: E731
        return {
            "format": KEY_FORMAT,
            "version": VERSION,
            "key_id": self.public.key_id,
            "ed25519": _b64(raw(self.ed25519)),
            "x25519": _b64(raw(self.x25519)),
        }

    @classmethod
    def from_dict(cls, raw: dict, source: str = "<vendor key>") -> "VendorKey":
        try:
            return cls(
                Ed25519PrivateKey.from_private_bytes(_unb64(raw["ed25519"], "ed25519 key")),
                X25519PrivateKey.from_private_bytes(_unb64(raw["x25519"], "x25519 key")),
            )
        except (KeyError, ValueError) as exc:
            raise PackageError(f"{source}: malformed vendor key ({exc})") from exc

    def save(self, path: str | Path) -> Path:
        """Write the private key file atomically with owner-only permissions."""
        return atomic_write_bytes(path, json.dumps(self.to_dict(), indent=1).encode() + b"\n", mode=0o600)

    @classmethod
    def load(cls, path: str | Path) -> "VendorKey":
        """Read a ``vendor.key`` file."""
        return cls.from_dict(_read_json(path, (KEY_FORMAT,)), str(path))


def _read_json(path: str | Path, formats: tuple[str, ...]) -> dict:
    path = Path(path)
    if not path.is_file():
        raise PackageError(f"no key file at {path}; create one with `tracemark vendor keygen`")
    try:
        raw = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{path}: not a tracemark vendor key file ({exc})") from exc
    if not isinstance(raw, dict) or raw.get("format") not in formats:
        raise PackageError(f"{path}: not a {' or '.join(formats)} file")
    if raw.get("version") != VERSION:
        raise PackageError(f"{path}: vendor key version {raw.get('version')!r}; this release reads {VERSION}")
    return raw


def verify_manifest(manifest_bytes: bytes, signature: bytes, public: Ed25519PublicKey, source: str) -> None:
    """Raise :class:`PackageSignatureError` unless ``signature`` signs ``manifest_bytes`` under ``public``."""
    try:
        public.verify(signature, SIGNATURE_CONTEXT + manifest_bytes)
    except InvalidSignature as exc:
        raise PackageSignatureError(
            f"{source}: the vendor signature does not verify; the package was altered or damaged in transit"
        ) from exc

