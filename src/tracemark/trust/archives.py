"""Bounds on zip archives from someone else, checked before a single byte is inflated.

:func:`read_zip` opens an archive held in memory, reads its central directory and refuses it
(:class:`~tracemark.errors.ArchiveBoundsError`) when it declares too many members, a member or a
total larger than the limits, or a compression ratio no honest file has; it refuses encryption,
patched data and unlisted compression methods (:class:`~tracemark.errors.ArchiveFeatureError`).
Only then are members read, as a stream, with a hard cap that holds even when the central
directory lies about sizes. Anything else wrong with the archive is an
:class:`~tracemark.errors.ArchiveError`.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from tracemark.errors import ArchiveBoundsError, ArchiveError, ArchiveFeatureError

_CHUNK = 1 << 16
_RATIO_FLOOR = 1 << 16
"""Members smaller than this (64 KiB) are not ratio-checked: a small file of zeros is harmless."""
REFUSED_FLAGS = {
    0x0001: "encrypted",
    0x0020: "compressed patched data",
    0x0040: "strong encryption",
    0x2000: "masked (encrypted) central directory",
}
_METHOD_NAMES = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError, RuntimeError, struct.error)


@dataclass(frozen=True)
class ZipLimits:
    """What an untrusted archive may cost: members, bytes (declared and read), ratio, methods."""

    max_archive_bytes: int = 1 << 30
    max_members: int = 10_000
    max_member_bytes: int = 256 << 20
    max_total_bytes: int = 1 << 30
    max_ratio: float = 100.0
    methods: frozenset[int] = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def check_file_size(path: str | os.PathLike[str], limits: ZipLimits, what: str = "archive") -> int:
    """The size of ``path``; raises :class:`ArchiveBoundsError` if it exceeds ``limits.max_archive_bytes``."""
    size = Path(path).stat().st_size
    if size > limits.max_archive_bytes:
        raise ArchiveBoundsError(f"{path}: the {what} is {_mib(size)}, over the {_mib(limits.max_archive_bytes)} accepted; it was refused unread")
    return size


def check_sizes(sizes: list[tuple[str, int]], limits: ZipLimits, where: str) -> None:
    """Refuse ``(name, size)`` lists over the member-count, member-size or total-size limits."""
    if len(sizes) > limits.max_members:
        raise ArchiveBoundsError(f"{where}: {len(sizes):,} members, over the {limits.max_members:,} accepted; refused before reading")
    total = 0
    for name, size in sizes:
        if size > limits.max_member_bytes:
            raise ArchiveBoundsError(
                f"{where}: member {name} declares {_mib(size)}, over the {_mib(limits.max_member_bytes)} accepted "
                "(a zip bomb?); refused before inflating"
            )
        total += size
    if total > limits.max_total_bytes:
        raise ArchiveBoundsError(f"{where}: members declare {_mib(total)} in all, over the {_mib(limits.max_total_bytes)} accepted; refused before inflating")


def check_directory(archive: zipfile.ZipFile, limits: ZipLimits, where: str) -> list[zipfile.ZipInfo]:
    """Check every central-directory record against ``limits``; return them in archive order."""
    infos = archive.infolist()
    check_sizes([(i.filename, i.file_size) for i in infos], limits, where)
    for info in infos:
        if info.file_size > _RATIO_FLOOR and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise ArchiveBoundsError(
                f"{where}: member {info.filename!r} would inflate {info.compress_size:,} bytes to {info.file_size:,} "
                f"(over {limits.max_ratio:g}:1, a zip bomb); refused before inflating"
            )
        for bit, feature in REFUSED_FLAGS.items():
            if info.flag_bits & bit:
                raise ArchiveFeatureError(f"{where}: member {info.filename!r} is marked {feature}; tracemark reads only plain archives")
        if info.compress_type not in limits.methods:
            method = _METHOD_NAMES.get(info.compress_type, f"method {info.compress_type}")
            allowed = ", ".join(sorted(_METHOD_NAMES.get(m, str(m)) for m in limits.methods))
            raise ArchiveFeatureError(f"{where}: member {info.filename!r} is compressed with {method}; only {allowed} is accepted here")
    return infos


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, where: str) -> bytes:
    """Stream one member, refusing it once more than ``min(declared size, cap)`` bytes come out."""
    limit = min(info.file_size, cap)
    out = bytearray()
    with archive.open(info) as stream:
        while chunk := stream.read(min(_CHUNK, limit + 1 - len(out))):
            out += chunk
            if len(out) > limit:
                raise ArchiveBoundsError(f"{where}: member {info.filename!r} inflates beyond its declared size or the cap; refused")
    if len(out) != info.file_size:
        raise ArchiveError(f"{where}: member {info.filename!r} is shorter than its declared size; the archive is corrupt")
    return bytes(out)


def read_zip(data: bytes, limits: ZipLimits, where: str) -> list[tuple[str, bytes]]:
    """All members of the zip ``data`` as ``(name, bytes)`` in archive order, within ``limits``."""
    if len(data) > limits.max_archive_bytes:
        raise ArchiveBoundsError(f"{where}: the archive is {_mib(len(data))}, over the {_mib(limits.max_archive_bytes)} accepted")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = check_directory(archive, limits, where)
            members, total = [], 0
            for info in infos:
                content = read_member(archive, info, min(limits.max_member_bytes, limits.max_total_bytes - total), where)
                total += len(content)
                members.append((info.filename, content))
    except ArchiveError:
        raise
    except _READ_ERRORS as exc:
        raise ArchiveError(f"{where}: not a readable zip archive ({exc}); it is corrupt or was altered") from exc
    return members


__all__ = ["REFUSED_FLAGS", "ZipLimits", "check_directory", "check_file_size", "check_sizes", "read_member", "read_zip"]
