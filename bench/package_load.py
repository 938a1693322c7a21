"""Benchmark: load time of a protected package vs the physical floor and the same plain safetensors file.

For synthetic float32 models of 10 MB, 100 MB and 1 GiB: the package (verify, licence, X25519
unwrap, chunked AES-256-GCM decryption on all cores, zero-copy tensors) against the floor measured
in the same run — the larger of (a) reading the package file from the page cache into a
preallocated buffer and (b) AES-256-GCM decryption of as many bytes, in the package's chunk size,
on all cores into preallocated memory — and against plain safetensors loaded fully into memory
(tensors materialised) and lazily (``load_file``, a memory map). Also shown: the time to fault in
as much new memory, which every full load pays in some form and the floor leaves out. Best of N warm runs.
Writes the table into docs/benchmarks.md between the ``package`` markers.

    python bench/package_load.py [--repeats 3] [--sizes 10MB,100MB,1GiB] [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import mmap
import os
import platform
import re
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import torch
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from safetensors.torch import load, load_file, save_file

from tracemark.package import Licence, RecipientKey, RecipientWrap, VendorKey, load_package, pack_model
from tracemark.package.chunks import DEFAULT_CHUNK_SIZE, MADV_POPULATE_WRITE, TAG_SIZE, chunk_nonce

SIZES = {"10MB": ("10 MB", 10 * 10**6), "100MB": ("100 MB", 100 * 10**6), "1GiB": ("1 GiB", 2**30)}
QUICK = ("10MB", "100MB")
DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
START, END = "<!-- package:start -->", "<!-- package:end -->"


def _model(path: Path, nbytes: int) -> None:
    tensor_bytes = min(nbytes, 64 << 20)
    tensors, left, i = {}, nbytes, 0
    gen = torch.Generator().manual_seed(0)
    while left > 0:
        n = min(tensor_bytes, left) // 4
        tensors[f"layer{i}.weight"] = torch.randn(n, generator=gen)
        left -= n * 4
        i += 1
    save_file(tensors, str(path))


def _best(fn, repeats: int) -> float:
    fn()  # warm the page cache
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
        del result
    return min(times)


def _materialised(path: Path) -> dict:
    """Every tensor copied into its own memory (the fastest full load measured here)."""
    return {name: t.clone() for name, t in load_file(str(path)).items()}


def _read_and_load(path: Path) -> dict:
    return load(path.read_bytes())


def _lazy(path: Path) -> dict:
    return load_file(str(path))


def _touched(nbytes: int) -> bytearray:
    """A buffer whose pages are already faulted in (so a floor measurement pays no page faults)."""
    return bytearray(b"\x01") * nbytes


def _read_floor(pkg: Path, repeats: int) -> float:
    """Best time to read the whole package file from the page cache into a preallocated buffer."""
    size = pkg.stat().st_size
    view = memoryview(_touched(size))

    def read() -> None:
        with pkg.open("rb", buffering=0) as f:
            if f.readinto(view) != size:
                raise RuntimeError(f"{pkg}: short read")

    return _best(read, repeats)


def _decrypt_floor(nbytes: int, repeats: int, chunk: int = DEFAULT_CHUNK_SIZE) -> float:
    """Best time to AES-256-GCM-decrypt ``nbytes`` in ``chunk``-sized pieces on all cores into preallocated memory."""
    aead, prefix = AESGCM(os.urandom(32)), os.urandom(4)
    count = max(1, -(-nbytes // chunk))
    lengths = [min(chunk, nbytes - i * chunk) for i in range(count)]
    sealed = memoryview(_touched(nbytes + count * TAG_SIZE))
    out = memoryview(_touched(nbytes))
    for i, n in enumerate(lengths):  # the ciphertext, encrypted once
        start = i * (chunk + TAG_SIZE)
        aead.encrypt_into(chunk_nonce(prefix, i), out[i * chunk : i * chunk + n], b"", sealed[start : start + n + TAG_SIZE])

    def one(i: int) -> None:
        start = i * (chunk + TAG_SIZE)
        n = lengths[i]
        aead.decrypt_into(chunk_nonce(prefix, i), sealed[start : start + n + TAG_SIZE], b"", out[i * chunk : i * chunk + n])

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return _best(lambda: list(pool.map(one, range(count))), repeats)


def _fresh_memory(nbytes: int, repeats: int, chunk: int = DEFAULT_CHUNK_SIZE) -> float:
    """Best time to get ``nbytes`` of new memory with every page faulted in, the way the loader does it:
    ``MADV_POPULATE_WRITE`` on each chunk on all cores (one write a page where the kernel lacks it)."""
    page, count = mmap.PAGESIZE, max(1, -(-nbytes // chunk))

    def populate(m: mmap.mmap, i: int) -> None:
        start, end = i * chunk, min((i + 1) * chunk, nbytes)
        try:
            m.madvise(MADV_POPULATE_WRITE, start, (end - start) // page * page)
        except OSError:
            view = memoryview(m)[start:end]
            view[::page] = b"\x01" * len(range(0, end - start, page))
            view.release()

    def fresh() -> None:
        with mmap.mmap(-1, nbytes) as m, ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            list(pool.map(lambda i: populate(m, i), range(count)))

    return _best(fresh, repeats)


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return re.search(r"Model name:\s*(.+)", out).group(1).strip()  # type: ignore[union-attr]
    except (OSError, subprocess.CalledProcessError, AttributeError):
        return platform.processor() or "unknown"


def run(repeats: int, sizes: tuple[str, ...]) -> str:
    vendor = VendorKey.generate()
    now = datetime.now(timezone.utc)
    licence = Licence("bench", now - timedelta(days=1), now + timedelta(days=1))
    unlock = RecipientKey.from_vendor(vendor)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tm-bench-") as tmp:
        for label, nbytes in (SIZES[name] for name in sizes):
            plain = Path(tmp) / "model.safetensors"
            pkg = Path(tmp) / "model.tmpkg"
            _model(plain, nbytes)
            t = time.perf_counter()
            pack_model(plain, pkg, vendor=vendor, licence=licence, wraps=[RecipientWrap(vendor.public)])
            pack_s = time.perf_counter() - t
            size = plain.stat().st_size
            mat = _best(lambda: _materialised(plain), repeats)
            read_load = _best(lambda: _read_and_load(plain), repeats)
            lazy = _best(lambda: _lazy(plain), repeats)
            package = _best(lambda: load_package(pkg, unlock, vendor_key=vendor.public).state_dict, repeats)
            read = _read_floor(pkg, repeats)
            decrypt = _decrypt_floor(size, repeats)
            fresh = _fresh_memory(size, repeats)
            rows.append((label, size, mat, read_load, lazy, package, read, decrypt, fresh, pack_s))
            plain.unlink()
            pkg.unlink()
    lines = [
        "| model | package load (s) | read floor (s, GiB/s) | decrypt floor (s, GiB/s) | floor (s) | **load / floor** "
        "| new memory (s, GiB/s) | load / max(floor, new memory) | plain materialised (s) | load / materialised "
        "| plain read + load(bytes) (s) | plain lazy mmap (s) | end-to-end GiB/s | pack (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    gib = 2**30
    for label, size, mat, read_load, lazy, package, read, decrypt, fresh, pack_s in rows:
        floor = max(read, decrypt)
        lines.append(
            f"| {label} | {package:.3f} | {read:.3f} ({size / read / gib:.2f}) | {decrypt:.3f} ({size / decrypt / gib:.2f}) "
            f"| {floor:.3f} | **{package / floor:.2f}x** | {fresh:.3f} ({size / fresh / gib:.2f}) "
            f"| {package / max(floor, fresh):.2f}x | {mat:.3f} "
            f"| {package / mat:.2f}x | {read_load:.3f} | {lazy:.4f} | {size / package / gib:.2f} | {pack_s:.2f} |"
        )
    return "\n".join(lines)


def write_section(table: str, repeats: int, sizes: tuple[str, ...]) -> None:
    section = "\n".join([
        START,
        "## Protected package load (capability 7)",
        "",
        f"Command: `python bench/package_load.py --repeats {repeats} --sizes {','.join(sizes)}`; "
        f"machine: {os.cpu_count()} cores, {_cpu()}; "
        f"date: {datetime.now(timezone.utc):%Y-%m-%d}; Python {platform.python_version()}, torch {torch.__version__}.",
        "",
        "Synthetic float32 safetensors models; best of warm runs (file in the page cache). *Package load*: "
        "`load_package` — signature, licence, X25519 unwrap, chunked AES-256-GCM decryption on all cores into one "
        "new buffer, tensors as views of it (no plaintext file). *Floor*, measured in the same run: the larger of "
        "the *read floor* (the package file read from the page cache with `readinto` into a preallocated, already "
        "faulted-in buffer) and the *decrypt floor* (AES-256-GCM `decrypt_into` of as many bytes, in the package's "
        f"{DEFAULT_CHUNK_SIZE >> 20} MiB chunks, on {os.cpu_count()} threads, into preallocated memory). Bar: load / floor "
        "<= 1.3x at 1 GiB. *New memory*: the time to fault in as many bytes of fresh memory as the loader does "
        "(`MADV_POPULATE_WRITE` a chunk at a time on all cores); the "
        "floor leaves it out, but any full load (plain or package) has to pay it in some form, and on a machine "
        "where page faults are slow it is of the order of the whole load. *Plain materialised*: "
        "`load_file` then a copy of every tensor (all weights in RAM; the fastest full load we found). "
        "*Read + load(bytes)*: `safetensors.torch.load(path.read_bytes())`. *Plain lazy*: `load_file` (memory map, "
        "nothing read yet).",
        "",
        table,
        END,
    ])
    text = DOC.read_text("utf-8") if DOC.exists() else "# Benchmarks\n"
    if START in text and END in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    tmp = DOC.with_suffix(".md.tmp")
    tmp.write_text(text, "utf-8")
    os.replace(tmp, DOC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"Comma-separated model sizes out of {', '.join(SIZES)}.")
    parser.add_argument("--quick", action="store_true", help=f"Only {' and '.join(QUICK)} (a quick check).")
    parser.add_argument("--no-write", action="store_true", help="Print the table only.")
    args = parser.parse_args()
    sizes = QUICK if args.quick else tuple(s.strip() for s in args.sizes.split(",") if s.strip())
    unknown = [s for s in sizes if s not in SIZES]
    if unknown or not sizes:
        parser.error(f"unknown size {', '.join(unknown) or '(none given)'}; choose from {', '.join(SIZES)}")
    table = run(args.repeats, sizes)
    print(table)
    if not args.no_write:
        write_section(table, args.repeats, sizes)
        print(f"written to {DOC}")


if __name__ == "__main__":
    main()
