"""The package container and its manifest (layout in docs/formats/package.md).

A package is one file::

    "TMPKG/01"                       8-byte magic with the container version
    chunk 0 .. chunk n-1             AES-256-GCM ciphertext + 16-byte tag each (see chunks.py)
    manifest                         canonical JSON, UTF-8
    signature                        64-byte Ed25519 over the manifest
    manifest length                  8 bytes, little-endian
    "TMPKGEND"                       8-byte end marker

The manifest sits at the end so a package streams out in one pass; it carries the SHA-256 of
all chunk tags, so the one signature covers the manifest and every chunk.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field

from tracemark._util.canonical import canonical_json, sha256_hex
from tracemark.errors import FormatVersionError, PackageError
from tracemark.package.chunks import NONCE_PREFIX_SIZE, ChunkLayout
from tracemark.package.errors import CorruptPackageError, KeyWrapStanzaError
from tracemark.package.licence import Licence
from tracemark.package.wrap.stanza import check_stanzas

FORMAT = "tracemark-package"
VERSION = 1
MAGIC = b"TMPKG/01"
MAGIC_PREFIX = b"TMPKG/"
END = b"TMPKGEND"
SIGNATURE_SIZE = 64
TAIL_SIZE = SIGNATURE_SIZE + 8 + len(END)
MAX_MANIFEST = 16 << 20
PACKAGE_ID_SIZE = 16
MODEL_FORMATS = ("safetensors", "onnx", "torch.export")
CIPHER = "AES-256-GCM"


@dataclass(frozen=True)
class ModelInfo:
    """Which model is inside and how to rebuild it: format, hash, size and (safetensors) architecture."""

    id: str
    format: str
    sha256: str
    size: int
    architecture: dict | None = None

    def __post_init__(self) -> None:
        if self.format not in MODEL_FORMATS:
            raise PackageError(f"model format {self.format!r} unknown; one of {', '.join(MODEL_FORMATS)}")

    def to_dict(self) -> dict:
        return {"id": self.id, "format": self.format, "sha256": self.sha256, "size": self.size, "architecture": self.architecture}


@dataclass(frozen=True)
class PayloadInfo:
    """How the weights are encrypted: cipher, chunking, nonce prefix and the digest of all chunk tags."""

    layout: ChunkLayout
    nonce_prefix: bytes
    tags_sha256: str
    cipher: str = CIPHER

    def to_dict(self) -> dict:
        return {
            "cipher": self.cipher,
            "plaintext_size": self.layout.plaintext_size,
            "chunk_size": self.layout.chunk_size,
            "chunk_count": self.layout.count,
            "nonce_prefix": base64.b64encode(self.nonce_prefix).decode(),
            "tags_sha256": self.tags_sha256,
        }


@dataclass(frozen=True)
class Manifest:
    """The signed description of a package. ``wraps`` are the key-wrapping stanzas."""

    package_id: bytes
    created: str
    model: ModelInfo
    licence: Licence
    payload: PayloadInfo
    vendor_public: bytes
    wraps: tuple[dict, ...] = field(default=())

    def core_dict(self) -> dict:
        """Everything but the stanzas: what each stanza's wrapped key is bound to."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "package_id": self.package_id.hex(),
            "created": self.created,
            "model": self.model.to_dict(),
            "licence": self.licence.to_dict(),
            "payload": self.payload.to_dict(),
            "vendor": {"ed25519": base64.b64encode(self.vendor_public).decode(), "key_id": sha256_hex(self.vendor_public)[:16]},
        }

    def core_digest(self) -> bytes:
        """SHA-256 of the canonical core (the binding for key wrapping)."""
        return bytes.fromhex(sha256_hex(canonical_json(self.core_dict())))

    def to_dict(self) -> dict:
        return {**self.core_dict(), "wraps": [dict(w) for w in self.wraps]}

    @property
    def vendor_key_id(self) -> str:
        return sha256_hex(self.vendor_public)[:16]

    @classmethod
    def from_dict(cls, raw: dict, source: str = "<package>") -> "Manifest":
        """Validate a manifest document; raises :class:`CorruptPackageError` on anything malformed."""
        check_version(raw, source)
        try:
            payload = raw["payload"]
            if payload["cipher"] != CIPHER:
                raise PackageError(f"cipher {payload['cipher']!r} unsupported")
            layout = ChunkLayout(int(payload["plaintext_size"]), int(payload["chunk_size"]))
            if layout.count != int(payload["chunk_count"]):
                raise PackageError("chunk count disagrees with sizes")
            prefix = base64.b64decode(payload["nonce_prefix"], validate=True)
            if len(prefix) != NONCE_PREFIX_SIZE:
                raise PackageError("nonce prefix has the wrong length")
            model = raw["model"]
            package_id = bytes.fromhex(raw["package_id"])
            vendor = base64.b64decode(raw["vendor"]["ed25519"], validate=True)
            if raw["vendor"].get("key_id") != sha256_hex(vendor)[:16]:
                raise PackageError("vendor key id does not match the vendor key")
            if len(package_id) != PACKAGE_ID_SIZE:
                raise PackageError(f"package id must be {PACKAGE_ID_SIZE} bytes")
            manifest = cls(
                package_id,
                str(raw["created"]),
                ModelInfo(str(model["id"]), str(model["format"]), str(model["sha256"]), int(model["size"]), model.get("architecture")),
                Licence.from_dict(raw["licence"]),
                PayloadInfo(layout, prefix, str(payload["tags_sha256"])),
                vendor,
            )
        except (PackageError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptPackageError(f"{source}: malformed manifest ({exc})") from exc
        try:
            wraps = check_stanzas(raw.get("wraps"))
        except KeyWrapStanzaError as exc:
            raise type(exc)(f"{source}: {exc}") from exc
        return cls(**{**manifest.__dict__, "wraps": wraps})


def check_version(raw: object, source: str) -> None:
    """Raise unless ``raw`` is a manifest of a format version this release reads."""
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CorruptPackageError(f"{source}: manifest is not a tracemark package manifest")
    if raw.get("version") != VERSION:
        raise FormatVersionError(f"{source}: package format version {raw.get('version')!r}; this release reads {VERSION}")


@dataclass(frozen=True)
class Container:
    """The located parts of a package file: raw manifest bytes, signature and where the payload is."""

    manifest_bytes: bytes
    signature: bytes
    payload_offset: int
    payload_size: int

    def manifest_document(self, source: str) -> dict:
        try:
            raw = json.loads(self.manifest_bytes.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError covers JSON and oversized numbers
            raise CorruptPackageError(f"{source}: manifest is not valid JSON; the package is damaged") from exc
        check_version(raw, source)
        return raw


def read_container(fd: int, source: str) -> Container:
    """Locate the parts of the package open on ``fd``; raises on a damaged or foreign file."""
    size = os.fstat(fd).st_size
    head = os.pread(fd, len(MAGIC), 0)
    if not head.startswith(MAGIC_PREFIX):
        raise CorruptPackageError(f"{source}: not a tracemark package (bad magic); did you pass the plain model?")
    if head != MAGIC:
        raise FormatVersionError(f"{source}: package container {head[len(MAGIC_PREFIX):]!r}; this release reads {MAGIC[len(MAGIC_PREFIX):]!r}")
    if size < len(MAGIC) + TAIL_SIZE:
        raise CorruptPackageError(f"{source}: package truncated ({size} bytes)")
    tail = os.pread(fd, TAIL_SIZE, size - TAIL_SIZE)
    if tail[-len(END):] != END:
        raise CorruptPackageError(f"{source}: package truncated or damaged (no end marker)")
    signature = tail[:SIGNATURE_SIZE]
    manifest_len = int.from_bytes(tail[SIGNATURE_SIZE : SIGNATURE_SIZE + 8], "little")
    payload_size = size - len(MAGIC) - TAIL_SIZE - manifest_len
    if manifest_len > MAX_MANIFEST or payload_size < 0:
        raise CorruptPackageError(f"{source}: package damaged (manifest length {manifest_len} impossible)")
    manifest_bytes = os.pread(fd, manifest_len, len(MAGIC) + payload_size)
    return Container(manifest_bytes, signature, len(MAGIC), payload_size)
