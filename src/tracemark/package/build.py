"""Build a package: stream-encrypt the model, describe it in a manifest, wrap the key, sign, write atomically."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Sequence

from torch import nn

from tracemark._util.canonical import canonical_json
from tracemark.data.models import ModelSpec, model_bytes
from tracemark.errors import ModelFileError, PackageError
from tracemark.package.chunks import DEFAULT_CHUNK_SIZE, NONCE_PREFIX_SIZE, ChunkLayout, encrypt_stream
from tracemark.package.format import MAGIC, END, Manifest, ModelInfo, PayloadInfo
from tracemark.package.licence import Licence
from tracemark.package.modelio import architecture_of, detect_format, safetensors_header
from tracemark.trust.modelfiles import check_exported_archive
from tracemark.package.signing import VendorKey, raw_public
from tracemark.package.wrap import Wrap

HEAD_PEEK = 1 << 20


@dataclass(frozen=True)
class PackResult:
    """What :func:`pack_model` wrote."""

    path: Path
    package_id: str
    model_id: str
    model_format: str
    model_sha256: str
    model_size: int
    chunk_count: int
    wraps: tuple[str, ...]
    licence: Licence

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "package_id": self.package_id,
            "model_id": self.model_id,
            "model_format": self.model_format,
            "model_sha256": self.model_sha256,
            "model_size": self.model_size,
            "chunk_count": self.chunk_count,
            "wraps": list(self.wraps),
            "licence": self.licence.to_dict(),
        }

    def __str__(self) -> str:
        return (
            f"packed {self.model_id} ({self.model_format}, {self.model_size} bytes, {self.chunk_count} chunks) "
            f"into {self.path}\n  package {self.package_id}\n  {self.licence}\n  opens with: {'; '.join(self.wraps)}"
        )


class _HashingReader:
    """Reads from a stream while hashing what it hands out."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream, self.hash = stream, hashlib.sha256()

    def read(self, n: int) -> bytes:
        data = self.stream.read(n)
        self.hash.update(data)
        return data


def _default_id(name: str, sha256: str) -> str:
    return f"model-{sha256[:12]}" if name.startswith("<") else Path(name).stem


def _open_source(source: str | Path | bytes | nn.Module, spec: ModelSpec | None) -> tuple[BinaryIO, int, str]:
    if isinstance(source, nn.Module):
        data = model_bytes(source, spec)
        return io.BytesIO(data), len(data), "<module>"
    if isinstance(source, (bytes, bytearray)):
        return io.BytesIO(source), len(source), "<bytes>"
    path = Path(source)
    if not path.is_file():
        raise ModelFileError(f"no model file at {path}")
    return path.open("rb"), path.stat().st_size, str(path)


def pack_model(
    source: str | Path | bytes | nn.Module,
    out: str | Path,
    *,
    vendor: VendorKey,
    licence: Licence,
    wraps: Sequence[Wrap],
    model_id: str | None = None,
    model_format: str | None = None,
    architecture: ModelSpec | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> PackResult:
    """Encrypt a model (file, bytes or tracemark ``nn.Module``) into a signed, licensed package at ``out``.

    ``wraps`` must hold at least one way to recover the key (e.g. ``PassphraseWrap``,
    ``RecipientWrap(vendor.public)``); ``architecture`` is needed only for safetensors without
    tracemark metadata. The file appears atomically, or not at all.
    """
    if not wraps:
        raise PackageError("give at least one key wrap (passphrase, recipient, TPM or machine), or nobody can open the package")
    stream, size, name = _open_source(source, architecture)
    out = Path(out)
    with stream:
        head = stream.read(HEAD_PEEK)
        stream.seek(0)
        fmt = model_format or detect_format(head, name)
        if fmt == "torch.export":  # never ship a program that would run code where it is opened
            check_exported_archive(stream.read(), name=name)
            stream.seek(0)
        arch = architecture.to_dict() if architecture else None
        if fmt == "safetensors" and arch is None:
            header = safetensors_header(head, name)
            arch = architecture_of(header, name) if header else None
        layout = ChunkLayout(size, chunk_size)
        data_key, package_id, prefix = os.urandom(32), os.urandom(16), os.urandom(NONCE_PREFIX_SIZE)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        try:
            with os.fdopen(fd, "wb") as dst:
                dst.write(MAGIC)
                reader = _HashingReader(stream)
                tags = encrypt_stream(reader, layout, dst, data_key, package_id, prefix)  # type: ignore[arg-type]
                manifest = Manifest(
                    package_id,
                    datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    ModelInfo(model_id or _default_id(name, reader.hash.hexdigest()), fmt, reader.hash.hexdigest(), size, arch),
                    licence,
                    PayloadInfo(layout, prefix, hashlib.sha256(b"".join(tags)).hexdigest()),
                    raw_public(vendor.ed25519.public_key()),
                )
                digest = manifest.core_digest()
                manifest = Manifest(**{**manifest.__dict__, "wraps": tuple(w.stanza(data_key, digest) for w in wraps)})
                document = canonical_json(manifest.to_dict())
                dst.write(document)
                dst.write(vendor.sign(document))
                dst.write(len(document).to_bytes(8, "little"))
                dst.write(END)
                dst.flush()
                os.fsync(dst.fileno())
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, out)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
    return PackResult(
        out, package_id.hex(), manifest.model.id, fmt, manifest.model.sha256, size, layout.count,
        tuple(w.describe() for w in wraps), licence,
    )
