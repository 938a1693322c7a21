"""Benchmark: load time of a protected package vs the same plain safetensors file.

For synthetic float32 models of 10 MB, 100 MB and 1 GiB: the package (verify, licence, X25519
unwrap, chunked AES-256-GCM decryption on all cores, zero-copy tensors) against plain safetensors
loaded fully into memory (read + ``safetensors.torch.load``, tensors materialised) and lazily
(``load_file``, a memory map). Best of N warm runs. Writes the table into docs/benchmarks.md
between the ``package`` markers.

    python bench/package_load.py [--repeats 3] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import torch
from safetensors.torch import load, load_file, save_file

from tracemark.package import Licence, RecipientKey, RecipientWrap, VendorKey, load_package, pack_model

SIZES = (("10 MB", 10 * 10**6), ("100 MB", 100 * 10**6), ("1 GiB", 2**30))
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


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return re.search(r"Model name:\s*(.+)", out).group(1).strip()  # type: ignore[union-attr]
    except (OSError, subprocess.CalledProcessError, AttributeError):
        return platform.processor() or "unknown"


def run(repeats: int) -> str:
    vendor = VendorKey.generate()
    now = datetime.now(timezone.utc)
    licence = Licence("bench", now - timedelta(days=1), now + timedelta(days=1))
    unlock = RecipientKey.from_vendor(vendor)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tm-bench-") as tmp:
        for label, nbytes in SIZES:
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
            rows.append((label, size, mat, read_load, lazy, package, pack_s))
            plain.unlink()
            pkg.unlink()
    lines = [
        "| model | plain materialised (s) | plain read + load(bytes) (s) | plain lazy mmap (s) | package load (s) "
        "| ratio vs materialised | end-to-end GiB/s | pack (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, size, mat, read_load, lazy, package, pack_s in rows:
        lines.append(
            f"| {label} | {mat:.3f} | {read_load:.3f} | {lazy:.4f} | {package:.3f} | {package / mat:.2f}x "
            f"| {size / package / 2**30:.2f} | {pack_s:.2f} |"
        )
    return "\n".join(lines)


def write_section(table: str, repeats: int) -> None:
    section = "\n".join([
        START,
        "## Protected package load (capability 7)",
        "",
        f"Command: `python bench/package_load.py --repeats {repeats}`; machine: {os.cpu_count()} cores, {_cpu()}; "
        f"date: {datetime.now(timezone.utc):%Y-%m-%d}; Python {platform.python_version()}, torch {torch.__version__}.",
        "",
        "Synthetic float32 safetensors models; best of warm runs (file in the page cache). *Plain materialised*: "
        "`load_file` then a copy of every tensor (all weights in RAM; the fastest full load we found). "
        "*Read + load(bytes)*: `safetensors.torch.load(path.read_bytes())`. *Plain lazy*: `load_file` (memory map, "
        "nothing read yet). *Package load*: `load_package` — signature, licence, X25519 unwrap, chunked AES-256-GCM "
        "decryption on all cores into one buffer, tensors as views of it (no plaintext file). Bar: ratio within 2x, "
        "at least 1 GiB/s end to end.",
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
    parser.add_argument("--no-write", action="store_true", help="Print the table only.")
    args = parser.parse_args()
    table = run(args.repeats)
    print(table)
    if not args.no_write:
        write_section(table, args.repeats)
        print(f"written to {DOC}")


if __name__ == "__main__":
    main()
