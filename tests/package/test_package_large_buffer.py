"""Plaintexts of 1 MiB and more decrypt into an anonymous memory map: contents, tensors, failures and wipes."""

from __future__ import annotations

import io
import mmap
import os
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from tests.package.conftest import NOW, make_licence
from tracemark.package import RecipientKey, RecipientWrap, VendorKey, decrypt_package, load_package, pack_model
from tracemark.package.chunks import ANON_MAP_THRESHOLD, ChunkLayout, decrypt_into_memory, encrypt_stream, wipe
from tracemark.package.errors import CorruptPackageError

KEY, PID, PREFIX = os.urandom(32), os.urandom(16), os.urandom(4)


def _sealed_file(data: bytes, chunk: int) -> tuple[ChunkLayout, list[bytes], tempfile._TemporaryFileWrapper]:
    layout = ChunkLayout(len(data), chunk)
    blob = io.BytesIO()
    tags = encrypt_stream(io.BytesIO(data), layout, blob, KEY, PID, PREFIX)
    f = tempfile.TemporaryFile()
    f.write(b"HEAD" + blob.getvalue())
    f.flush()
    return layout, tags, f


@pytest.mark.parametrize("chunk", [64 << 10, 100_003])  # page-aligned chunks and chunks that split pages
@pytest.mark.parametrize("workers", [1, 3])
def test_large_plaintext_round_trips_into_an_anonymous_map(chunk: int, workers: int) -> None:
    data = os.urandom(ANON_MAP_THRESHOLD + 300_001)
    layout, tags, f = _sealed_file(data, chunk)
    with f:
        plain = decrypt_into_memory(f.fileno(), 4, layout, KEY, PID, PREFIX, tags, workers)
    assert isinstance(plain, mmap.mmap) and len(plain) == len(data)
    assert bytes(plain) == data


def test_a_bad_chunk_in_a_large_plaintext_is_named() -> None:
    data = os.urandom(2 * ANON_MAP_THRESHOLD)
    layout, tags, f = _sealed_file(data, 64 << 10)
    with f:
        f.seek(4 + layout.cipher_offset(20) + 7)
        f.write(b"\xff")
        f.flush()
        with pytest.raises(CorruptPackageError, match="chunk 20 of 32"):
            decrypt_into_memory(f.fileno(), 4, layout, KEY, PID, PREFIX, tags, 2)


def test_the_signed_tag_is_used_not_the_one_in_the_file() -> None:
    """A file whose stored tag differs from the vouched-for one fails, even if the stored tag is right."""
    data = os.urandom(ANON_MAP_THRESHOLD)
    layout, tags, f = _sealed_file(data, 64 << 10)
    vouched = list(tags)
    vouched[3] = bytes(16)
    with f, pytest.raises(CorruptPackageError, match="chunk 3 of"):
        decrypt_into_memory(f.fileno(), 4, layout, KEY, PID, PREFIX, vouched, 2)


def test_wipe_zeroes_a_map_and_a_bytearray_in_place() -> None:
    big = mmap.mmap(-1, 3 * (16 << 20) + 5)
    big[:] = b"\x07" * len(big)
    small = bytearray(b"secret")
    wipe(big)
    wipe(small)
    assert big[:] == bytes(len(big)) and small == bytearray(6)


def test_large_safetensors_package_gives_tensors_that_outlive_the_buffer(tmp_path: Path, vendor: VendorKey) -> None:
    gen = torch.Generator().manual_seed(1)
    tensors = {"w": torch.randn(700, 600, generator=gen), "b": torch.arange(1000, dtype=torch.int64)}
    raw = save(tensors)
    out = tmp_path / "big.tmpkg"
    pack_model(raw, out, vendor=vendor, licence=make_licence(), wraps=[RecipientWrap(vendor.public)], chunk_size=256 << 10)
    unlock = RecipientKey.from_vendor(vendor)
    _, plain, _ = decrypt_package(out, unlock, vendor_key=vendor.public, now=NOW)
    assert isinstance(plain, mmap.mmap) and bytes(plain) == raw
    state = load_package(out, unlock, vendor_key=vendor.public, now=NOW).state_dict
    assert state is not None and set(state) == {"w", "b"}
    for name, tensor in tensors.items():
        assert torch.equal(state[name], tensor)
