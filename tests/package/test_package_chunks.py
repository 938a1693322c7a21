"""The chunked AEAD on its own: boundaries, binding of index and last flag, and >2 GiB arithmetic."""

from __future__ import annotations

import io
import os
import tempfile

import pytest

from tracemark.package.chunks import TAG_SIZE, ChunkLayout, chunk_nonce, decrypt_into_memory, encrypt_stream
from tracemark.package.errors import CorruptPackageError

KEY, PID, PREFIX = os.urandom(32), os.urandom(16), os.urandom(4)


def _encrypt(data: bytes, chunk: int) -> tuple[ChunkLayout, bytes, list[bytes]]:
    layout = ChunkLayout(len(data), chunk)
    out = io.BytesIO()
    tags = encrypt_stream(io.BytesIO(data), layout, out, KEY, PID, PREFIX)
    return layout, out.getvalue(), tags


def _decrypt(layout: ChunkLayout, blob: bytes, tags: list[bytes], workers: int = 2) -> bytearray:
    with tempfile.TemporaryFile() as f:
        f.write(b"HEAD" + blob)
        f.flush()
        return decrypt_into_memory(f.fileno(), 4, layout, KEY, PID, PREFIX, tags, workers)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 63, 64, 65, 640, 1000])
@pytest.mark.parametrize("workers", [1, 2])
def test_roundtrip_at_chunk_boundaries(size: int, workers: int) -> None:
    data = os.urandom(size)
    layout, blob, tags = _encrypt(data, 16 if size < 100 else 64)
    assert len(blob) == layout.ciphertext_size == size + layout.count * TAG_SIZE
    assert bytes(_decrypt(layout, blob, tags, workers)) == data


def test_moving_a_chunk_with_its_tag_fails() -> None:
    """Even if an attacker also swaps the tags (as if the signature were bypassed), the index binding holds."""
    layout, blob, tags = _encrypt(os.urandom(64), 16)
    c = [blob[i * 32 : (i + 1) * 32] for i in range(layout.count)]
    swapped = c[1] + c[0] + c[2] + c[3]
    with pytest.raises(CorruptPackageError, match="chunk 0"):
        _decrypt(layout, swapped, [tags[1], tags[0], tags[2], tags[3]])


def test_truncating_at_a_chunk_boundary_fails() -> None:
    """Dropping the final chunk, and shrinking the layout to match, leaves no chunk flagged last."""
    layout, blob, tags = _encrypt(os.urandom(64), 16)
    short = ChunkLayout(48, 16)
    with pytest.raises(CorruptPackageError, match="chunk 2"):
        _decrypt(short, blob[: 3 * 32], tags[:3])


def test_chunk_from_another_package_fails() -> None:
    layout, blob, tags = _encrypt(os.urandom(32), 16)
    with tempfile.TemporaryFile() as f:
        f.write(blob)
        f.flush()
        with pytest.raises(CorruptPackageError):
            decrypt_into_memory(f.fileno(), 0, layout, KEY, os.urandom(16), PREFIX, tags, 1)


def test_layout_of_a_5_gib_model() -> None:
    size = 5 * 2**30 + 12345
    layout = ChunkLayout(size, 4 << 20)
    assert layout.count == 1281
    assert layout.plain_len(layout.count - 1) == 12345
    assert sum(layout.plain_len(i) for i in range(layout.count)) == size
    assert layout.cipher_offset(layout.count - 1) == 1280 * ((4 << 20) + TAG_SIZE) > 2**32
    assert chunk_nonce(PREFIX, 2**33)[4:] == (2**33).to_bytes(8, "big")
    assert len({chunk_nonce(PREFIX, i) for i in range(layout.count)}) == layout.count
