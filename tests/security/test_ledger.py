"""Issue 15, ledger and evidence bundles: zip bombs, refused zip features, malformed signed payloads, rollback, unpinned authority, fuzz."""

from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tests.ledger._tsa import Authority, LocalTSA
from tests.ledger.conftest import ledger_dir, owner, wm_key  # noqa: F401 (fixtures; authority and tsa come from tests/conftest.py)
from tests.security._ledger_fuzz import fuzz_bundle, fuzz_ledger, fuzz_resigned, resign
from tracemark.cli import evidence as evidence_cli
from tracemark.cli import ledger as ledger_cli
from tracemark.errors import ArchiveBoundsError, ArchiveError
from tracemark.keys import WatermarkKey
from tracemark.ledger import Ledger, OwnerIdentity, export_bundle, obtain_timestamp, verify_ledger
from tracemark.ledger.bundle import LEDGER, MANIFEST, read_members
from tracemark.ledger.errors import RollbackError, UnpinnedAuthorityError
from tracemark.ledger.store import mark_path
from tracemark.trust.archives import ZipLimits, read_zip

ROOT = Path(__file__).resolve().parents[2]
FUZZ_MUTATIONS = 300
BOMB_SIZE = 4 << 30  # 4 GiB of zeros


def _app() -> typer.Typer:
    root = typer.Typer()
    ledger_cli.register(root)
    evidence_cli.register(root)
    return root


def _one_line_failure(result) -> str:  # noqa: ANN001 (click Result)
    assert "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture
def bundle(ledger_dir: Path, owner: OwnerIdentity, wm_key: WatermarkKey, tmp_path: Path) -> Path:
    out = tmp_path / "evidence.zip"
    export_bundle(ledger_dir, out, owner, keys=[wm_key])
    return out


# ---------------------------------------------------------------------- finding 4: zip bomb
def _zip(entries: list[tuple[str, int, bytes, int, int]]) -> bytes:
    """A zip64 archive of ``(name, method, raw data, crc, uncompressed size)`` written by hand (no re-compression)."""
    out, central = bytearray(), bytearray()
    for name, method, raw, crc, size in entries:
        offset, encoded = len(out), name.encode()
        extra = struct.pack("<HHQQ", 1, 16, size, len(raw))
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, method, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(encoded), len(extra))
        out += encoded + extra + raw
        cextra = struct.pack("<HHQQQ", 1, 24, size, len(raw), offset)
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45 | 3 << 8, 45, 0, method, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                               len(encoded), len(cextra), 0, 0, 0, 0o644 << 16, 0xFFFFFFFF)
        central += encoded + cextra
    start, n = len(out), len(entries)
    out += central
    end64 = len(out)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(central), start)
    out += struct.pack("<IIQI", 0x07064B50, 0, end64, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return bytes(out)


def _deflated_zeros(size: int) -> bytes:
    """Raw deflate of ``size`` zero bytes in ~1 s: one 1 MiB block, full-flushed, repeated (each block is self-contained)."""
    chunk = 1 << 20
    block = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = block.compress(bytes(chunk)) + block.flush(zlib.Z_FULL_FLUSH)
    again = block.compress(bytes(chunk)) + block.flush(zlib.Z_FULL_FLUSH)
    assert first == again and size % chunk == 0
    return first * (size // chunk) + block.flush()


@pytest.fixture
def zip_bomb(bundle: Path, tmp_path: Path) -> Path:
    members = read_members(bundle)
    entries = [(name, 0, data, zlib.crc32(data), len(data)) for name, data in members.items()]
    entries.append(("attachments/" + "0" * 64, zipfile.ZIP_DEFLATED, _deflated_zeros(BOMB_SIZE), 0, BOMB_SIZE))
    path = tmp_path / "bomb.zip"
    path.write_bytes(_zip(entries))
    return path


_MEASURE = """
import json, resource, sys, time
from tracemark.errors import TracemarkError
from tracemark.ledger import verify_bundle
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    verify_bundle(sys.argv[1]); error = None
except TracemarkError as exc:
    error = type(exc).__name__
print(json.dumps({"error": error, "seconds": time.perf_counter() - start,
                  "peak_delta_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))
"""


def test_zip_bomb_bundle_is_refused_fast_in_little_memory(zip_bomb: Path) -> None:
    assert zip_bomb.stat().st_size <= 5 << 20
    with zipfile.ZipFile(zip_bomb) as archive:
        assert sum(i.file_size for i in archive.infolist()) >= BOMB_SIZE
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"  # a MemoryError if it inflates
    run = subprocess.run([sys.executable, "-c", limit + _MEASURE, str(zip_bomb)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"bomb of {zip_bomb.stat().st_size:,} bytes declaring {BOMB_SIZE:,}: {measured}")
    assert measured["error"] == "ArchiveBoundsError", measured
    assert measured["seconds"] < 2 and measured["peak_delta_mib"] < 200, measured


def test_zip_member_larger_than_its_central_directory_says_is_capped() -> None:
    inflated = zlib.compressobj(9, zlib.DEFLATED, -15)
    raw = inflated.compress(bytes(64 << 20)) + inflated.flush()
    liar = _zip([("small.bin", zipfile.ZIP_DEFLATED, raw, zlib.crc32(bytes(1000)), 1000)])
    limits = ZipLimits(max_member_bytes=1 << 20, max_ratio=1e9)
    assert read_zip(liar, limits, "liar.zip") == [("small.bin", bytes(1000))]  # inflating stops at the declared size
    wrong_crc = _zip([("small.bin", zipfile.ZIP_DEFLATED, raw, 0, 1000)])
    with pytest.raises(ArchiveError):
        read_zip(wrong_crc, limits, "liar.zip")
    with pytest.raises(ArchiveBoundsError):
        read_zip(_zip([("big.bin", zipfile.ZIP_DEFLATED, raw, 0, 64 << 20)]), limits, "big.zip")


# ---------------------------------------------------------------------- finding 6: refused zip features, malformed payloads
@pytest.mark.parametrize("bit", [0x01, 0x40])
def test_encrypted_flag_bit_gives_one_line_error_exit_2(bundle: Path, bit: int) -> None:
    data = bytearray(bundle.read_bytes())
    central = data.rfind(b"PK\x01\x02")
    data[central + 8] |= bit
    bundle.write_bytes(bytes(data))
    result = CliRunner().invoke(_app(), ["evidence", "verify", str(bundle)])
    assert result.exit_code == 2, result.output
    assert "ArchiveFeatureError" in _one_line_failure(result) and "encrypt" in result.output


@pytest.mark.parametrize("field, value", [
    ("key_commitment", 5),                       # key-created: wrong type
    ("verdict_sha256", None),                    # verification: attachment field not a hash
    ("record", "/etc/passwd"),                   # timestamped: a path outside the bundle
    ("last_seq", "3"),                           # timestamped: wrong type
    ("missing", None),                           # every payload: a required field removed
])
def test_malformed_payload_of_a_validly_signed_entry_is_a_named_error(bundle: Path, field: str, value: object) -> None:
    members = {k: v for k, v in read_members(bundle).items() if k != MANIFEST}
    docs = [json.loads(line) for line in members[LEDGER].splitlines()]
    target = next(d for d in docs if field in d["payload"]) if field != "missing" else docs[1]
    if field == "missing":
        target["payload"].pop(sorted(target["payload"])[0])
    else:
        target["payload"][field] = value
    bundle.write_bytes(resign(members, docs, OwnerIdentity.generate()))  # signatures and manifest hold
    result = CliRunner().invoke(_app(), ["evidence", "verify", str(bundle)])
    assert result.exit_code == 2, result.output
    assert "MalformedPayloadError" in _one_line_failure(result)


# ---------------------------------------------------------------------- finding 10: rollback
def _rollback(ledger_dir: Path, owner: OwnerIdentity, tsa: LocalTSA, authority: Authority, tmp_path: Path) -> dict[str, Path]:
    """Save witnesses of a later state, then cut the later entries and restore the older genuine head."""
    old = {name: (ledger_dir / name).read_bytes() for name in ("ledger.jsonl", "head.json")}
    ledger = Ledger.open(ledger_dir, owner)
    ledger.append("note", {"x": 1})
    obtain_timestamp(ledger, tsa.url, authority.chain_pem.read_bytes(), timeout=10)
    witnesses = {"bundle": tmp_path / "later.zip", "head": tmp_path / "later-head.json", "token": tmp_path / "later-token.json"}
    export_bundle(ledger_dir, witnesses["bundle"], owner)
    shutil.copy(ledger_dir / "head.json", witnesses["head"])
    newest = sorted((ledger_dir / "tokens").iterdir())[-1]
    shutil.copy(newest, witnesses["token"])
    for name, data in old.items():
        (ledger_dir / name).write_bytes(data)
    witnesses["stray"] = newest
    return witnesses


def test_rollback_with_restored_head_is_detected_by_each_witness(
    ledger_dir: Path, owner: OwnerIdentity, tsa: LocalTSA, authority: Authority, tmp_path: Path
) -> None:
    witnesses = _rollback(ledger_dir, owner, tsa, authority, tmp_path)
    with pytest.raises(RollbackError, match="token"):  # the later token is still in tokens/
        verify_ledger(ledger_dir, trust_any_authority=True)
    witnesses.pop("stray").unlink()  # a careful attacker deletes it
    with pytest.raises(RollbackError, match="high-water mark"):  # the store's mark outside the ledger
        verify_ledger(ledger_dir, strict=True, trust_any_authority=True)
    mark = mark_path(Ledger.open(ledger_dir).entries()[0].payload["ledger_id"])
    saved_mark = mark.read_bytes()
    mark.unlink()  # ... and it, if they can reach it
    for kind, path in witnesses.items():  # a witness kept elsewhere still catches it
        with pytest.raises(RollbackError):
            verify_ledger(ledger_dir, witnesses=[path], trust_any_authority=True)
        result = CliRunner().invoke(_app(), ["ledger", "verify", str(ledger_dir), "--witness", str(path), "--tsa-ca", str(authority.ca_pem)])
        assert isinstance(result.exception, RollbackError), (kind, result.output)
    # what remains undetectable: no witness beyond the rollback point (documented in the guide)
    assert verify_ledger(ledger_dir, trust_any_authority=True).entries == 6
    # appending on top of a rolled-back ledger is refused while the mark exists
    mark.write_bytes(saved_mark)
    with pytest.raises(RollbackError):
        Ledger.open(ledger_dir, owner).append("note", {"x": 2})


# ---------------------------------------------------------------------- finding 11: unpinned authority
def test_unpinned_authority_is_refused_by_default_and_accepted_only_with_the_opt_in(
    ledger_dir: Path, bundle: Path, authority: Authority, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone can run an authority: tokens checked only against the root they carry are refused (ledger and bundle),
    unless --trust-any-authority, which warns (and --strict then fails); a pin by flag or environment passes."""
    monkeypatch.delenv("TRACEMARK_TSA_CA", raising=False)
    runner, app = CliRunner(), _app()
    for command in (["ledger", "verify", str(ledger_dir)], ["evidence", "verify", str(bundle)]):
        result = runner.invoke(app, command)
        assert result.exit_code != 0
        assert isinstance(result.exception, UnpinnedAuthorityError) or "UnpinnedAuthorityError" in result.output, result.output
        result = runner.invoke(app, [*command, "--trust-any-authority"])
        assert result.exit_code == 0, result.output
        assert sum("WARNING" in line and "not pinned" in line for line in result.output.splitlines()) == 1
        result = runner.invoke(app, [*command, "--trust-any-authority", "--json"])
        assert any("not pinned" in w for w in json.loads(result.output)["warnings"])
        result = runner.invoke(app, [*command, "--tsa-ca", str(authority.ca_pem)])
        assert result.exit_code == 0 and "not pinned" not in result.output, result.output
    result = runner.invoke(app, ["ledger", "verify", str(ledger_dir), "--trust-any-authority", "--strict"])
    assert result.exit_code != 0 and "not pinned" in str(result.exception)
    monkeypatch.setenv("TRACEMARK_TSA_CA", str(authority.ca_pem))
    result = runner.invoke(app, ["ledger", "verify", str(ledger_dir), "--strict"])
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------------- byte-flip fuzz
def test_fuzzed_ledger_files_are_never_accepted(ledger_dir: Path) -> None:
    counts = fuzz_ledger(ledger_dir, FUZZ_MUTATIONS, random.Random("security-ledger"))
    assert counts.ok and counts.total == FUZZ_MUTATIONS, (str(counts), counts.failures)
    verify_ledger(ledger_dir, trust_any_authority=True)


def test_fuzzed_bundles_are_never_accepted(bundle: Path) -> None:
    counts = fuzz_bundle(bundle, FUZZ_MUTATIONS, random.Random("security-bundle"))
    assert counts.ok and counts.accepted == 0, (str(counts), counts.failures)


def test_fuzzed_resigned_bundles_give_only_named_errors(bundle: Path) -> None:
    counts = fuzz_resigned(bundle, FUZZ_MUTATIONS, random.Random("security-resigned"))
    assert counts.bare == counts.tracebacks == 0, (str(counts), counts.failures)
