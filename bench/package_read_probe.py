"""Probe: would decrypting straight from a memory map of the package file beat the loader's read-then-decrypt?

Not the loader: a stand-alone measurement of three ways to decrypt SIZE bytes of AES-256-GCM chunks (4 MiB, as in a
package) from a file in the page cache into fresh anonymous memory on all cores, best of REPEATS:

- ``pread``: each worker reads its chunk into its own buffer (``os.preadv``) and decrypts it into place (the loader);
- ``mmap``: ``AESGCM.decrypt_into`` reads ciphertext and tag from a read-only shared map of the file (no copy);
- ``mmap, tag apart``: the ``Cipher`` API reads the ciphertext from the map and takes the tag separately (what a loader
  that must use the signed tags, not the file's, would do).

    .venv/bin/python bench/package_read_probe.py --size-mib 1024 --repeats 3
"""

from __future__ import annotations

import argparse
import mmap
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

CHUNK = 4 << 20
TAG = 16
POPULATE_WRITE = 23  # MADV_POPULATE_WRITE (Linux >= 5.14)


def _nonce(i: int) -> bytes:
    return i.to_bytes(12, "big")


def _fresh(size: int) -> mmap.mmap:
    return mmap.mmap(-1, size + TAG, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _run(count: int, workers: int, one) -> None:
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(count)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    count, size, workers = args.size_mib // 4, args.size_mib << 20, os.cpu_count() or 1
    key = AESGCM.generate_key(256)
    aead = AESGCM(key)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chunks.bin"
        with path.open("wb") as f:
            block = os.urandom(CHUNK)
            for i in range(count):
                f.write(aead.encrypt(_nonce(i), block, None))
        fd = os.open(path, os.O_RDONLY)
        source = mmap.mmap(fd, 0, prot=mmap.PROT_READ, flags=mmap.MAP_SHARED)
        src = memoryview(source)
        local = threading.local()

        def pread(out: mmap.mmap):
            view = memoryview(out)

            def one(i: int) -> None:
                if getattr(local, "buf", None) is None:
                    local.buf = bytearray(CHUNK + TAG)
                os.preadv(fd, [local.buf], i * (CHUNK + TAG))
                out.madvise(POPULATE_WRITE, i * CHUNK, CHUNK)
                AESGCM(key).decrypt_into(_nonce(i), local.buf, None, view[i * CHUNK:(i + 1) * CHUNK])
            return one

        def mapped(out: mmap.mmap):
            view = memoryview(out)

            def one(i: int) -> None:
                out.madvise(POPULATE_WRITE, i * CHUNK, CHUNK)
                AESGCM(key).decrypt_into(_nonce(i), src[i * (CHUNK + TAG):(i + 1) * (CHUNK + TAG)], None,
                                         view[i * CHUNK:(i + 1) * CHUNK])
            return one

        def tag_apart(out: mmap.mmap):
            view = memoryview(out)

            def one(i: int) -> None:
                start = i * (CHUNK + TAG)
                out.madvise(POPULATE_WRITE, i * CHUNK, CHUNK)
                dec = Cipher(algorithms.AES(key), modes.GCM(_nonce(i), bytes(src[start + CHUNK:start + CHUNK + TAG]))).decryptor()
                dec.update_into(src[start:start + CHUNK], view[i * CHUNK:(i + 1) * CHUNK + TAG - 1])
                dec.finalize()
            return one

        best = {}
        for _ in range(args.repeats):
            for name, make in (("pread", pread), ("mmap", mapped), ("mmap, tag apart", tag_apart)):
                out = _fresh(size)
                start = time.perf_counter()
                _run(count, workers, make(out))
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
                out.close()
        src.release()
        source.close()
        os.close(fd)
    for name, seconds in best.items():
        print(f"{name:16s} {seconds:.3f} s  ({args.size_mib / 1024 / seconds:.2f} GiB/s)  {seconds / best['pread']:.2f}x pread")


if __name__ == "__main__":
    main()
