"""Evidence bundles: export, offline verification elsewhere, and named failures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tracemark._util.canonical import canonical_json
from tracemark.errors import BundleError, SignatureError
from tracemark.keys import WatermarkKey
from tracemark.ledger import OwnerIdentity, export_bundle, verify_bundle
from tracemark.ledger.bundle import pack, read_members
from tracemark.ledger.errors import BundleMemberError, KeyRevealError, SequenceError, TruncatedLedgerError

VERIFY_ELSEWHERE = """
import sys
from tracemark.ledger import verify_bundle
print(verify_bundle(sys.argv[1], trust_any_authority=True))
"""


@pytest.fixture
def bundle(ledger_dir: Path, owner: OwnerIdentity, wm_key: WatermarkKey, tmp_path: Path) -> Path:
    out = tmp_path / "out" / "evidence.zip"
    report = export_bundle(ledger_dir, out, owner, keys=[wm_key])
    assert report.keys[0]["revealed"] and report.keys[0]["timestamped"]
    return out


def test_bundle_verifies_in_a_fresh_process_with_only_the_bundle(bundle: Path, wm_key: WatermarkKey, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    copy = shutil.copy(bundle, elsewhere / "received.zip")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEMARK_")}
    env["HOME"] = str(elsewhere)
    proc = subprocess.run(
        [sys.executable, "-c", VERIFY_ELSEWHERE, "received.zip"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "all checks passed" in proc.stdout
    assert wm_key.commitment()[:16] in proc.stdout
    assert "verdict copy" in proc.stdout and "p_value=3e-90" in proc.stdout
    assert "ACME GmbH" in proc.stdout
    # the summary inside the bundle says the same to a human
    assert "verdict copy" in read_members(copy)["SUMMARY.txt"].decode()


def _rebuild(bundle: Path, members: dict[str, bytes]) -> None:
    bundle.write_bytes(pack(members))


def test_edited_ledger_in_bundle_is_detected(bundle: Path) -> None:
    members = read_members(bundle)
    lines = members["ledger.jsonl"].splitlines(keepends=True)
    lines[2], lines[3] = lines[3], lines[2]
    members["ledger.jsonl"] = b"".join(lines)
    _rebuild(bundle, members)
    with pytest.raises(SequenceError):
        verify_bundle(bundle, trust_any_authority=True)


def test_truncated_ledger_in_bundle_is_detected(bundle: Path) -> None:
    members = read_members(bundle)
    members["ledger.jsonl"] = b"".join(members["ledger.jsonl"].splitlines(keepends=True)[:-1])
    _rebuild(bundle, members)
    with pytest.raises(TruncatedLedgerError):
        verify_bundle(bundle, trust_any_authority=True)


def test_dropped_or_added_member_is_detected(bundle: Path) -> None:
    members = read_members(bundle)
    attachment = next(n for n in members if n.startswith("attachments/"))
    _rebuild(bundle, {k: v for k, v in members.items() if k != attachment})
    with pytest.raises(BundleMemberError, match="missing"):
        verify_bundle(bundle, trust_any_authority=True)
    _rebuild(bundle, {**members, "extra.txt": b"hi"})
    with pytest.raises(BundleMemberError, match="unexpected"):
        verify_bundle(bundle, trust_any_authority=True)


def test_re_signed_manifest_by_someone_else_is_refused(bundle: Path) -> None:
    members = read_members(bundle)
    manifest = json.loads(members["MANIFEST.json"])
    manifest["sig"] = OwnerIdentity.generate().sign(b"x").hex()
    members["MANIFEST.json"] = canonical_json(manifest) + b"\n"
    _rebuild(bundle, members)
    with pytest.raises(SignatureError):
        verify_bundle(bundle, trust_any_authority=True)


def test_other_key_revealed_is_refused(bundle: Path, tmp_path: Path) -> None:
    from tracemark.keys import encode_key_file

    members = read_members(bundle)
    name = next(n for n in members if n.startswith("keys/"))
    other = WatermarkKey.generate("abstract", input_shape=(1, 8, 8), num_classes=10, n_triggers=16)
    members[name] = encode_key_file(other)
    extracted = tmp_path / "x"
    for member, data in members.items():  # as a directory, so only the reveal check can object ...
        (extracted / member).parent.mkdir(parents=True, exist_ok=True)
        (extracted / member).write_bytes(data)
    with pytest.raises(BundleMemberError):  # ... after the manifest hash, which catches it first
        verify_bundle(extracted, trust_any_authority=True)
    from tracemark.ledger.bundle import _check_reveals
    from tracemark.ledger.chain import parse_entries

    with pytest.raises(KeyRevealError, match="not committed"):
        _check_reveals(members, parse_entries(members["ledger.jsonl"], "ledger")[0])


def test_slice_keeps_chain_to_start_and_pins_owner(ledger_dir: Path, owner: OwnerIdentity, tmp_path: Path) -> None:
    out = tmp_path / "slice.zip"
    report = export_bundle(ledger_dir, out, owner, upto=2)
    assert report.entries == 3
    assert report.keys and not report.keys[0]["revealed"]
    assert any("not revealed" in w for w in report.warnings)
    with pytest.raises(SignatureError):
        verify_bundle(out, expected_key=OwnerIdentity.generate().public_key)
    with pytest.raises(BundleError, match="outside"):
        export_bundle(ledger_dir, tmp_path / "bad.zip", owner, upto=99)
    assert not (tmp_path / "bad.zip").exists()


def test_uncommitted_key_cannot_be_revealed(ledger_dir: Path, owner: OwnerIdentity, tmp_path: Path) -> None:
    other = WatermarkKey.generate("abstract", input_shape=(1, 8, 8), num_classes=10, n_triggers=16)
    with pytest.raises(KeyRevealError):
        export_bundle(ledger_dir, tmp_path / "b.zip", owner, keys=[other])
