"""Chunked AES-256-GCM: each chunk its own nonce, its index and a last-chunk flag bound as associated data.

Chunk ``i`` of a package is ``AES-256-GCM(key, nonce = prefix || i, aad = package_id || i || last)``
over at most ``chunk_size`` plaintext bytes, stored as ciphertext followed by its 16-byte tag.
Moving a chunk changes its nonce and associated data, dropping the final one leaves no chunk
flagged last, and every tag is covered by the signed manifest, so reordering, truncation and
substitution all fail. Chunks keep each GCM call far below its 2^31-byte limit, so models of any
size work; decryption runs on several threads (the cipher releases the GIL) straight into one
preallocated buffer.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tracemark.errors import PackageError
from tracemark.package.errors import CorruptPackageError

TAG_SIZE = 16
NONCE_PREFIX_SIZE = 4
DEFAULT_CHUNK_SIZE = 4 << 20
MAX_CHUNK_SIZE = 1 << 30
AAD_LABEL = b"tracemark-package/1 chunk\x00"
PARALLEL_THRESHOLD = 32 << 20


@dataclass(frozen=True)
class ChunkLayout:
    """Where the encrypted chunks are and how big: enough to find and check each one."""

    plaintext_size: int
    chunk_size: int

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise PackageError(f"chunk size must be between 1 byte and {MAX_CHUNK_SIZE} bytes, not {self.chunk_size}")
        if self.plaintext_size < 0:
            raise PackageError("plaintext size cannot be negative")

    @property
    def count(self) -> int:
        return max(1, -(-self.plaintext_size // self.chunk_size))

    def plain_len(self, index: int) -> int:
        """Plaintext length of chunk ``index``."""
        if index < self.count - 1:
            return self.chunk_size
        return self.plaintext_size - (self.count - 1) * self.chunk_size

    def cipher_offset(self, index: int) -> int:
        """Offset of chunk ``index`` from the start of the encrypted payload."""
        return index * (self.chunk_size + TAG_SIZE)

    @property
    def ciphertext_size(self) -> int:
        return self.plaintext_size + self.count * TAG_SIZE


def chunk_nonce(prefix: bytes, index: int) -> bytes:
    """The 12-byte nonce of chunk ``index``: a per-package random prefix and the 64-bit index."""
    return prefix + index.to_bytes(8, "big")


def chunk_aad(package_id: bytes, index: int, last: bool) -> bytes:
    """Associated data of chunk ``index``: binds the package, the position and the last-chunk flag."""
    return AAD_LABEL + package_id + index.to_bytes(8, "big") + (b"\x01" if last else b"\x00")


def encrypt_stream(
    src: BinaryIO, layout: ChunkLayout, dst: BinaryIO, key: bytes, package_id: bytes, nonce_prefix: bytes
) -> list[bytes]:
    """Encrypt ``layout.plaintext_size`` bytes from ``src`` into ``dst`` chunk by chunk; return the tags."""
    aead = AESGCM(key)
    tags: list[bytes] = []
    for index in range(layout.count):
        want = layout.plain_len(index)
        plain = src.read(want)
        if len(plain) != want:
            raise PackageError(f"model source ended early: chunk {index} has {len(plain)} of {want} bytes")
        sealed = aead.encrypt(chunk_nonce(nonce_prefix, index), plain, chunk_aad(package_id, index, index == layout.count - 1))
        dst.write(sealed)
        tags.append(sealed[-TAG_SIZE:])
    return tags


def read_tags(fd: int, payload_offset: int, layout: ChunkLayout) -> list[bytes]:
    """The stored tag of every chunk, read by position (no decryption)."""
    tags = []
    for index in range(layout.count):
        end = payload_offset + layout.cipher_offset(index) + layout.plain_len(index) + TAG_SIZE
        tag = os.pread(fd, TAG_SIZE, end - TAG_SIZE)
        if len(tag) != TAG_SIZE:
            raise CorruptPackageError(f"package truncated: chunk {index} of {layout.count} is missing")
        tags.append(tag)
    return tags


def decrypt_into_memory(
    fd: int,
    payload_offset: int,
    layout: ChunkLayout,
    key: bytes,
    package_id: bytes,
    nonce_prefix: bytes,
    tags: list[bytes],
    workers: int | None = None,
    source: str = "<package>",
) -> bytearray:
    """Decrypt every chunk of the payload at ``payload_offset`` in ``fd`` into one new buffer.

    ``tags`` are the tags the signature vouched for; each chunk must authenticate under its own
    tag, nonce and associated data, or :class:`CorruptPackageError` names the chunk. The
    plaintext exists only in the returned buffer (no file, no intermediate copies).
    """
    # GCM's update_into wants room for one extra block; the slack is never written.
    out = bytearray(layout.plaintext_size + 15)
    view = memoryview(out)
    count = layout.count
    scratch = threading.local()  # one reusable ciphertext buffer per thread

    def one(index: int) -> None:
        length = layout.plain_len(index)
        start = payload_offset + layout.cipher_offset(index)
        if getattr(scratch, "buf", None) is None:
            scratch.buf = bytearray(layout.chunk_size if count > 1 else length)
        ciphertext = memoryview(scratch.buf)[:length]
        got = os.preadv(fd, [ciphertext], start) if length else 0
        if got != length:
            raise CorruptPackageError(f"{source}: package truncated inside chunk {index} of {count}")
        decryptor = Cipher(algorithms.AES(key), modes.GCM(chunk_nonce(nonce_prefix, index), tags[index])).decryptor()
        decryptor.authenticate_additional_data(chunk_aad(package_id, index, index == count - 1))
        offset = index * layout.chunk_size
        decryptor.update_into(ciphertext, view[offset : offset + length + 15])
        try:
            decryptor.finalize()
        except InvalidTag as exc:
            raise CorruptPackageError(
                f"{source}: chunk {index} of {count} does not authenticate (altered, moved or truncated); "
                "get a fresh copy of the package"
            ) from exc

    if workers is None:  # threads only pay off once there is real work to share
        workers = 1 if layout.plaintext_size < PARALLEL_THRESHOLD else min(count, os.cpu_count() or 1, 8)
    try:
        if workers <= 1:
            for index in range(count):
                one(index)
        else:
            with ThreadPoolExecutor(workers) as pool:
                for future in [pool.submit(one, i) for i in range(count)]:
                    future.result()
    except BaseException:
        view[:] = b"\x00" * len(view)  # leave no partial plaintext behind
        view.release()
        raise
    view.release()
    del out[layout.plaintext_size :]
    return out
