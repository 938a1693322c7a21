"""Any altered byte, and any reordered, dropped or truncated chunk, is refused with a named error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.package.conftest import NOW
from tracemark.errors import FormatVersionError, PackageError, TamperedError
from tracemark.package import (
    CorruptPackageError,
    PackageSignatureError,
    RecipientKey,
    UntrustedSignerError,
    VendorKey,
    load_package,
)
from tracemark.package.format import MAGIC, TAIL_SIZE, read_container


def _regions(path: Path) -> tuple[int, int, int]:
    """(payload end, manifest end, file size)."""
    with path.open("rb") as f:
        c = read_container(f.fileno(), str(path))
    size = path.stat().st_size
    return c.payload_offset + c.payload_size, c.payload_offset + c.payload_size + len(c.manifest_bytes), size


def _load(path: Path, vendor: VendorKey):
    return load_package(path, RecipientKey.from_vendor(vendor), vendor_key=vendor.public, now=NOW, workers=1)


def test_every_flipped_byte_is_refused(tiny_package: Path, vendor: VendorKey, tmp_path: Path) -> None:
    original = tiny_package.read_bytes()
    payload_end, manifest_end, size = _regions(tiny_package)
    assert size >= 1000  # so this is at least 1,000 single-byte flips, every one caught
    bad = tmp_path / "bad.tmpkg"
    seen: dict[str, set[type]] = {"magic": set(), "payload": set(), "manifest": set(), "signature": set(), "trailer": set()}
    for pos in range(size):
        data = bytearray(original)
        data[pos] ^= 0x01
        bad.write_bytes(data)
        with pytest.raises((PackageError, TamperedError, FormatVersionError)) as info:
            _load(bad, vendor)
        region = (
            "magic" if pos < len(MAGIC) else "payload" if pos < payload_end else "manifest" if pos < manifest_end
            else "signature" if pos < manifest_end + 64 else "trailer"
        )
        seen[region].add(type(info.value))
    assert seen["signature"] == {PackageSignatureError}
    assert seen["payload"] == {CorruptPackageError}
    # version digit: FormatVersionError; the embedded signer key: UntrustedSignerError (not the pinned key)
    assert seen["manifest"] <= {PackageSignatureError, UntrustedSignerError, CorruptPackageError, FormatVersionError}
    assert PackageSignatureError in seen["manifest"]
    assert seen["magic"] <= {CorruptPackageError, FormatVersionError}
    assert seen["trailer"] == {CorruptPackageError}
    bad.write_bytes(original)
    assert _load(bad, vendor).state_dict is not None  # the loop's copy itself was sound


def test_sampled_flips_in_a_real_model_package(module_package: Path, vendor: VendorKey, tmp_path: Path) -> None:
    original = module_package.read_bytes()
    bad = tmp_path / "bad.tmpkg"
    for pos in range(len(MAGIC), len(original), 7919):
        data = bytearray(original)
        data[pos] ^= 0x80
        bad.write_bytes(data)
        with pytest.raises((CorruptPackageError, PackageSignatureError)):
            _load(bad, vendor)


def _chunk_span(path: Path, index: int, chunk_size: int) -> tuple[int, int]:
    start = len(MAGIC) + index * (chunk_size + 16)
    return start, start + chunk_size + 16


def test_reordered_dropped_truncated_chunks_are_refused(tiny_package: Path, vendor: VendorKey, tmp_path: Path) -> None:
    original = tiny_package.read_bytes()
    chunk = 256
    a0, a1 = _chunk_span(tiny_package, 0, chunk)
    b0, b1 = _chunk_span(tiny_package, 1, chunk)
    cases = {
        "swapped": original[:a0] + original[b0:b1] + original[a0:a1] + original[b1:],
        "dropped": original[:a0] + original[a1:],
        "duplicated": original[:b1] + original[a0:a1] + original[b1:],
        "truncated": original[: len(original) // 2],
        "tail-only": original[len(original) - TAIL_SIZE :],
    }
    for name, data in cases.items():
        bad = tmp_path / f"{name}.tmpkg"
        bad.write_bytes(data)
        with pytest.raises(CorruptPackageError):
            _load(bad, vendor)


def test_pinned_vendor_key_refuses_another_signer(tiny_package: Path, vendor: VendorKey) -> None:
    with pytest.raises(UntrustedSignerError, match="not by the pinned key"):
        load_package(tiny_package, RecipientKey.from_vendor(vendor), vendor_key=VendorKey.generate().public, now=NOW)


def test_plain_model_file_is_not_a_package(tmp_path: Path, vendor: VendorKey, tiny_safetensors: bytes) -> None:
    plain = tmp_path / "m.safetensors"
    plain.write_bytes(tiny_safetensors)
    with pytest.raises(CorruptPackageError, match="not a tracemark package"):
        _load(plain, vendor)
    empty = tmp_path / "empty.tmpkg"
    empty.write_bytes(os.urandom(0))
    with pytest.raises(CorruptPackageError):
        _load(empty, vendor)
