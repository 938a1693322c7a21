"""Chunked AES-256-GCM: each chunk its own nonce, its index and a last-chunk flag bound as associated data.

Chunk ``i`` of a package is ``AES-256-GCM(key, nonce = prefix || i, aad = package_id || i || last)``
over at most ``chunk_size`` plaintext bytes, stored as ciphertext followed by its 16-byte tag.
Moving a chunk changes its nonce and associated data, dropping the final one leaves no chunk
flagged last, and every tag is covered by the signed manifest, so reordering, truncation and
substitution all fail. Chunks keep each GCM call far below its 2^31-byte limit, so models of any
size work; decryption runs on several threads (the cipher releases the GIL), each reading its own
chunks, straight into one preallocated buffer.
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tracemark.errors import PackageError
from tracemark.package.errors import CorruptPackageError

TAG_SIZE = 16
NONCE_PREFIX_SIZE = 4
DEFAULT_CHUNK_SIZE = 4 << 20
MAX_CHUNK_SIZE = 1 << 30
AAD_LABEL = b"tracemark-package/1 chunk\x00"
PARALLEL_THRESHOLD = 32 << 20
MAX_WORKERS = 8
ANON_MAP_THRESHOLD = 1 << 20  # smaller plaintexts go into a bytearray
WIPE_STEP = 16 << 20
MADV_POPULATE_WRITE = 23  # Linux's value; Python's mmap module does not name it
_CAN_POPULATE = sys.platform.startswith("linux") and hasattr(mmap.mmap, "madvise")

PlainBuffer = bytearray | mmap.mmap
"""Decrypted model bytes: a ``bytearray`` or, for large models, an anonymous (never file-backed) memory map."""


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


def new_plaintext_buffer(size: int) -> PlainBuffer:
    """A writable buffer of ``size`` bytes for plaintext: anonymous private memory, never a file.

    Large buffers are an anonymous memory map, which costs nothing until written (a ``bytearray``
    would first zero every page on one thread, as long again as the decryption itself).
    """
    if size < ANON_MAP_THRESHOLD:
        return bytearray(size)
    if hasattr(mmap, "MAP_PRIVATE"):
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return mmap.mmap(-1, size)  # Windows: anonymous memory backed by the paging file, like any other


def wipe(buffer: PlainBuffer) -> None:
    """Overwrite ``buffer`` with zeros in place (chunk by chunk, so no second buffer of its size)."""
    view = memoryview(buffer).cast("B")
    zeros = bytes(min(len(view), WIPE_STEP))
    for start in range(0, len(view), WIPE_STEP):
        end = min(start + WIPE_STEP, len(view))
        view[start:end] = zeros[: end - start]
    view.release()


def _populate(buffer: PlainBuffer, start: int, length: int) -> None:
    """Fault in ``buffer[start:start+length]`` in one system call where the kernel offers it (Linux >= 5.14).

    Only an optimisation: a page the kernel does not populate is faulted in by the first write.
    """
    global _CAN_POPULATE
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages only: the kernel wants aligned ranges
    end = (start + length) // mmap.PAGESIZE * mmap.PAGESIZE
    if not _CAN_POPULATE or not isinstance(buffer, mmap.mmap) or end <= first:
        return
    try:
        buffer.madvise(MADV_POPULATE_WRITE, first, end - first)
    except OSError:  # EINVAL: a kernel without MADV_POPULATE_WRITE
        _CAN_POPULATE = False


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
) -> PlainBuffer:
    """Decrypt every chunk of the payload at ``payload_offset`` in ``fd`` into one new buffer.

    ``tags`` are the tags the signature vouched for; each chunk must authenticate under its own
    tag, nonce and associated data, or :class:`CorruptPackageError` names the chunk (the tag
    stored in the file is replaced by the vouched-for one before decryption, so a file changed
    after the tags were checked cannot slip in another tag). Each worker reads its chunk
    (``os.preadv``, so reading overlaps decryption) into its own small buffer and decrypts it
    straight into its place in the result. The plaintext exists only in the returned buffer (no
    file, no other copy); on failure that buffer is wiped before the error propagates.
    """
    out = new_plaintext_buffer(layout.plaintext_size)
    view = memoryview(out).cast("B")
    count, chunk = layout.count, layout.chunk_size
    local = threading.local()  # per thread: a reusable ciphertext buffer and a cipher object

    def one(index: int) -> None:
        length = layout.plain_len(index)
        if getattr(local, "sealed", None) is None:
            local.sealed, local.aead = bytearray((chunk if count > 1 else length) + TAG_SIZE), AESGCM(key)
        sealed = memoryview(local.sealed)[: length + TAG_SIZE]
        got = os.preadv(fd, [sealed[:length]], payload_offset + layout.cipher_offset(index)) if length else 0
        if got != length:
            raise CorruptPackageError(f"{source}: package truncated inside chunk {index} of {count}")
        sealed[length:] = tags[index]
        offset = index * chunk
        _populate(out, offset, length)
        try:
            local.aead.decrypt_into(
                chunk_nonce(nonce_prefix, index), sealed, chunk_aad(package_id, index, index == count - 1),
                view[offset : offset + length],
            )
        except InvalidTag as exc:
            raise CorruptPackageError(
                f"{source}: chunk {index} of {count} does not authenticate (altered, moved or truncated); "
                "get a fresh copy of the package"
            ) from exc

    if workers is None:  # threads only pay off once there is real work to share
        workers = 1 if layout.plaintext_size < PARALLEL_THRESHOLD else min(count, os.cpu_count() or 1, MAX_WORKERS)
    try:
        if workers <= 1:
            for index in range(count):
                one(index)
        else:
            with ThreadPoolExecutor(workers) as pool:
                for future in [pool.submit(one, i) for i in range(count)]:
                    future.result()
    except BaseException:
        view.release()
        wipe(out)  # leave no partial plaintext behind
        raise
    view.release()
    return out
