"""Byte-flip fuzz of ledgers and evidence bundles through the real verify path; prints outcome counts.

    .venv/bin/python bench/fuzz_ledger.py [--mutations 5000] [--seed 0]

A local throw-away RFC 3161 authority (openssl) time-stamps the ledger. Every mutation must be
rejected with a named error or verify to the original content; see tests/security/_ledger_fuzz.py.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.ledger._tsa import LocalTSA, make_authority  # noqa: E402
from tests.ledger.conftest import populate  # noqa: E402
from tests.security._ledger_fuzz import fuzz_bundle, fuzz_ledger, fuzz_resigned  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutations", type=int, default=5000, help="mutations per target (default 5000)")
    parser.add_argument("--seed", default="0")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TRACEMARK_STATE_DIR"] = str(Path(tmp) / "state")
        from tracemark.keys import WatermarkKey
        from tracemark.ledger import Ledger, OwnerIdentity, export_bundle

        owner = OwnerIdentity.generate()
        key = WatermarkKey.generate("abstract", input_shape=(1, 8, 8), num_classes=10, n_triggers=16)
        authority = make_authority(Path(tmp) / "tsa")
        with LocalTSA(authority) as tsa:
            ledger = Ledger.init(Path(tmp) / "ledger", owner)
            populate(ledger, key, tsa, authority)
        bundle = Path(tmp) / "evidence.zip"
        export_bundle(ledger.directory, bundle, owner, keys=[key])
        failed = False
        for name, fuzz, target in (("ledger files", fuzz_ledger, ledger.directory), ("bundle zip", fuzz_bundle, bundle),
                                   ("re-signed bundle", fuzz_resigned, bundle)):
            start = time.perf_counter()
            counts = fuzz(target, args.mutations, random.Random(f"{args.seed}-{name}"))
            print(f"{name:17s} {counts} ({time.perf_counter() - start:.1f} s)")
            print(f"{'':17s} errors: " + ", ".join(f"{k} {v}" for k, v in counts.errors.most_common()))
            for failure in counts.failures:
                print(f"{'':17s} FAIL {failure[:500]}")
            failed |= not counts.ok
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
