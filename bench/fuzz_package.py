"""Fuzz: mutated packages through the real load path; every one must end in a named error.

Two campaigns on a small package (five 256-byte chunks, a passphrase stanza at the smallest scrypt
cost and an X25519 stanza), each loaded with the right unlockers and the vendor's key pinned:

- *bytes*: seeded single-byte flips, random byte values, truncations and one-byte insertions
  anywhere in the file. All must be refused (a signature, tag or size check).
- *re-signed*: a random field of the manifest replaced by a hostile value (wrong types, huge or
  negative numbers, long strings, nesting) and the manifest re-signed by the pinned vendor key, as a
  vendor's buggy or hostile tool might. These may load (a field nothing binds) but must never end in
  anything but a named error.

Prints counts: accepted, each named error type, other exceptions (with the first few tracebacks).

    python bench/fuzz_package.py [--mutations 5000] [--resigned 2000] [--seed 15]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import traceback
import warnings
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import save

from tracemark._util.canonical import canonical_json
from tracemark.errors import TracemarkError
from tracemark.package import Licence, OutputPolicy, Passphrase, PassphraseWrap, RecipientKey, RecipientWrap, VendorKey
from tracemark.package import load_package, pack_model
from tracemark.package.format import END, read_container

PASSPHRASE = "fuzzing passphrase"
NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)
HOSTILE_VALUES: tuple[Any, ...] = (
    None, True, 0, -1, 1.5, 2**31, 2**64, 10**300, "", "A", "A" * 5000, "!!", "AAAA", "2099-01-01T00:00:00Z",
    [], [1, 2], {}, {"a": 1}, [[[[[]]]]], "sha256:7", "probabilities", "x25519", "passphrase", 1e308,
)


def build(directory: Path, vendor: VendorKey) -> Path:
    """The package under test."""
    data = save({"w": torch.arange(300, dtype=torch.float32)})
    licence = Licence("fuzz", NOW - timedelta(days=1), NOW + timedelta(days=30), (), OutputPolicy("top_k", 3, 2))
    out = directory / "pkg.tmpkg"
    pack_model(data, out, vendor=vendor, licence=licence,
               wraps=[PassphraseWrap(PASSPHRASE, n=2**10), RecipientWrap(vendor.public)], chunk_size=256)
    return out


def byte_mutations(raw: bytes, count: int, rng: random.Random) -> Iterator[bytes]:
    """Single-byte flips (2 in 5), random byte values, truncations and insertions, anywhere in the file."""
    for i in range(count):
        data = bytearray(raw)
        pos = rng.randrange(len(raw))
        kind = i % 5
        if kind in (0, 1):
            data[pos] ^= 1 << rng.randrange(8)
        elif kind == 2:
            data[pos] = (data[pos] + rng.randrange(1, 256)) % 256
        elif kind == 3:
            del data[pos:]
        else:
            data[pos:pos] = bytes([rng.randrange(256)])
        yield bytes(data)


def _leaves(node: Any, path: tuple = ()) -> Iterator[tuple]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield path + (key,)
            yield from _leaves(value, path + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield path + (index,)
            yield from _leaves(value, path + (index,))


def resigned_mutations(raw: bytes, count: int, rng: random.Random, vendor: VendorKey, source: Path) -> Iterator[bytes]:
    """A random manifest field set to a hostile value (or deleted), re-signed by the pinned vendor."""
    with source.open("rb") as f:
        c = read_container(f.fileno(), str(source))
    head, document = raw[: c.payload_offset + c.payload_size], json.loads(c.manifest_bytes)
    paths = list(_leaves(document))
    for _ in range(count):
        doc = json.loads(json.dumps(document))
        *parents, last = rng.choice(paths)
        node = doc
        for step in parents:
            node = node[step]
        if rng.random() < 0.15 and isinstance(node, dict):
            del node[last]
        else:
            node[last] = rng.choice(HOSTILE_VALUES)
        manifest = canonical_json(doc)
        yield head + manifest + vendor.sign(manifest) + len(manifest).to_bytes(8, "little") + END


def campaign(name: str, mutations: Iterator[bytes], target: Path, vendor: VendorKey) -> tuple[Counter, list[str]]:
    """Load every mutation; count outcomes."""
    unlockers = [Passphrase(PASSPHRASE), RecipientKey.from_vendor(vendor)]
    counts: Counter = Counter()
    tracebacks: list[str] = []
    for data in mutations:
        target.write_bytes(data)
        try:
            load_package(target, unlockers, vendor_key=vendor.public, now=NOW, workers=1)
        except TracemarkError as exc:
            counts[f"named: {type(exc).__name__}"] += 1
        except Exception as exc:  # what the fuzz is looking for
            counts[f"OTHER: {type(exc).__name__}"] += 1
            if len(tracebacks) < 3:
                tracebacks.append(f"[{name}] " + "".join(traceback.format_exception(exc)))
        else:
            counts["accepted"] += 1
    return counts, tracebacks


def report(name: str, counts: Counter, seconds: float) -> None:
    total = sum(counts.values())
    other = sum(v for k, v in counts.items() if k.startswith("OTHER"))
    print(f"{name}: {total} mutations in {seconds:.1f} s; accepted {counts['accepted']}, other exceptions {other}")
    for key, value in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if key != "accepted":
            print(f"  {key:40s} {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutations", type=int, default=5000, help="byte-level mutations (all must be refused)")
    parser.add_argument("--resigned", type=int, default=2000, help="re-signed manifest mutations (named errors only)")
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    vendor = VendorKey.generate()
    warnings.simplefilter("ignore")
    failed = False
    with tempfile.TemporaryDirectory(prefix="tm-fuzz-") as tmp:
        source = build(Path(tmp), vendor)
        raw = source.read_bytes()
        print(f"package: {len(raw)} bytes; seed {args.seed}")
        target = Path(tmp) / "mutated.tmpkg"
        for name, mutations in (
            ("bytes", byte_mutations(raw, args.mutations, rng)),
            ("re-signed", resigned_mutations(raw, args.resigned, rng, vendor, source)),
        ):
            start = time.perf_counter()
            counts, tracebacks = campaign(name, mutations, target, vendor)
            report(name, counts, time.perf_counter() - start)
            for text in tracebacks:
                print(text)
            failed |= bool(tracebacks) or (name == "bytes" and counts["accepted"] > 0)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
