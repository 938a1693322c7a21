"""Property test: every single-byte flip of a ledger file or a bundle is caught with a named error."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from tracemark.errors import TracemarkError
from tracemark.keys import WatermarkKey
from tracemark.ledger import OwnerIdentity, export_bundle, verify_bundle, verify_ledger

FLIPS_PER_TARGET = 300


def _flip(data: bytes, rng: random.Random) -> tuple[bytes, int]:
    pos = rng.randrange(len(data))
    delta = rng.randrange(1, 256)
    return data[:pos] + bytes([data[pos] ^ delta]) + data[pos + 1 :], pos


@pytest.mark.parametrize("member", ["ledger.jsonl", "head.json", "token"])
def test_every_byte_flip_in_ledger_files_is_caught(ledger_dir: Path, member: str) -> None:
    rng = random.Random(f"ledger-{member}")
    verify_ledger(ledger_dir, trust_any_authority=True)
    path = next((ledger_dir / "tokens").iterdir()) if member == "token" else ledger_dir / member
    original = path.read_bytes()
    for _ in range(FLIPS_PER_TARGET):
        flipped, pos = _flip(original, rng)
        path.write_bytes(flipped)
        with pytest.raises(TracemarkError) as caught:
            verify_ledger(ledger_dir, trust_any_authority=True)
        assert type(caught.value) is not TracemarkError, f"flip at {pos} gave an unnamed error"
    path.write_bytes(original)
    verify_ledger(ledger_dir, trust_any_authority=True)


def test_every_byte_flip_in_a_bundle_is_caught(ledger_dir: Path, owner: OwnerIdentity, wm_key: WatermarkKey, tmp_path: Path) -> None:
    bundle = tmp_path / "evidence.zip"
    export_bundle(ledger_dir, bundle, owner, keys=[wm_key])
    original = bundle.read_bytes()
    rng = random.Random("bundle")
    for _ in range(FLIPS_PER_TARGET):
        flipped, pos = _flip(original, rng)
        bundle.write_bytes(flipped)
        with pytest.raises(TracemarkError):
            verify_bundle(bundle, trust_any_authority=True)
    # and each member of the extracted bundle, flipped in place
    bundle.write_bytes(original)
    extracted = tmp_path / "extracted"
    shutil.unpack_archive(bundle, extracted, format="zip")
    members = sorted(p for p in extracted.rglob("*") if p.is_file())
    for i in range(FLIPS_PER_TARGET // 2):
        path = members[i % len(members)]
        data = path.read_bytes()
        flipped, pos = _flip(data, rng)
        path.write_bytes(flipped)
        with pytest.raises(TracemarkError):
            verify_bundle(extracted, trust_any_authority=True)
        path.write_bytes(data)
    verify_bundle(extracted, trust_any_authority=True)
