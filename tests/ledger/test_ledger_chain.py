"""Entries, signatures, the hash chain and the signed head: every kind of tampering gets a named error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracemark._util.canonical import canonical_json
from tracemark.errors import FormatVersionError, KeyFileError, LedgerError, SignatureError, WrongPassphraseError
from tracemark.ledger import Ledger, OwnerIdentity, load_public_key, verify_ledger
from tracemark.ledger.errors import (
    EntryTamperedError,
    HeadError,
    MalformedEntryError,
    SequenceError,
    TornTailError,
    TruncatedLedgerError,
)

from .conftest import PASSPHRASE


def _lines(ledger_dir: Path) -> list[bytes]:
    return (ledger_dir / "ledger.jsonl").read_bytes().splitlines(keepends=True)


def _write(ledger_dir: Path, lines: list[bytes]) -> None:
    (ledger_dir / "ledger.jsonl").write_bytes(b"".join(lines))


def test_chain_records_each_event_with_owner_signature(ledger_dir: Path, owner: OwnerIdentity) -> None:
    report = verify_ledger(ledger_dir, expected_key=owner.public_key, trust_any_authority=True)
    assert report.entries == 6
    assert report.events == {"ledger-created": 1, "key-created": 1, "model-embedded": 1, "verification": 1, "timestamped": 1, "model-packaged": 1}
    assert report.owner_fingerprint == owner.fingerprint()
    assert report.untimestamped == [5]
    entries = Ledger.open(ledger_dir).entries()
    assert [e.seq for e in entries] == list(range(6))
    assert all(b.prev == a.hash for a, b in zip(entries, entries[1:]))
    # nothing secret in payloads: the key's seed never appears
    assert "seed" not in (ledger_dir / "ledger.jsonl").read_text()


def test_other_owner_is_refused(ledger_dir: Path) -> None:
    stranger = OwnerIdentity.generate()
    with pytest.raises(SignatureError):
        verify_ledger(ledger_dir, expected_key=stranger.public_key, trust_any_authority=True)
    with pytest.raises(LedgerError, match="another owner"):
        Ledger.open(ledger_dir, stranger).append("note", {"x": 1})


def test_edited_payload_is_detected(ledger_dir: Path) -> None:
    lines = _lines(ledger_dir)
    doc = json.loads(lines[2])
    doc["payload"]["model_sha256"] = "c" * 64
    lines[2] = canonical_json(doc) + b"\n"
    _write(ledger_dir, lines)
    with pytest.raises(EntryTamperedError, match="entry 2"):
        verify_ledger(ledger_dir, trust_any_authority=True)


def test_edited_and_rehashed_entry_fails_signature(ledger_dir: Path) -> None:
    from tracemark.ledger.entries import Entry

    lines = _lines(ledger_dir)
    doc = json.loads(lines[2])
    doc["payload"]["model_sha256"] = "c" * 64
    entry = Entry(**{k: doc[k] for k in ("seq", "time", "event", "payload", "prev", "owner", "hash", "sig")})
    from tracemark._util.canonical import sha256_hex

    doc["hash"] = sha256_hex(entry.signing_bytes())
    lines[2] = canonical_json(doc) + b"\n"
    _write(ledger_dir, lines)
    with pytest.raises(SignatureError, match="entry 2"):
        verify_ledger(ledger_dir, trust_any_authority=True)


def test_dropped_entry_is_detected(ledger_dir: Path) -> None:
    lines = _lines(ledger_dir)
    del lines[3]
    _write(ledger_dir, lines)
    with pytest.raises(SequenceError, match="dropped"):
        verify_ledger(ledger_dir, trust_any_authority=True)


def test_reordered_entries_are_detected(ledger_dir: Path) -> None:
    lines = _lines(ledger_dir)
    lines[2], lines[3] = lines[3], lines[2]
    _write(ledger_dir, lines)
    with pytest.raises(SequenceError):
        verify_ledger(ledger_dir, trust_any_authority=True)


def test_dropped_last_entry_is_detected_by_signed_head(ledger_dir: Path) -> None:
    _write(ledger_dir, _lines(ledger_dir)[:-1])
    with pytest.raises(TruncatedLedgerError, match="cut off the end"):
        verify_ledger(ledger_dir, trust_any_authority=True)


def test_missing_or_foreign_head_is_detected(ledger_dir: Path, tmp_path: Path, owner: OwnerIdentity) -> None:
    other = Ledger.init(tmp_path / "other", owner)
    head = (ledger_dir / "head.json").read_bytes()
    (ledger_dir / "head.json").write_bytes((other.directory / "head.json").read_bytes())
    with pytest.raises(HeadError, match="another ledger"):
        verify_ledger(ledger_dir, trust_any_authority=True)
    (ledger_dir / "head.json").unlink()
    with pytest.raises(HeadError, match="missing"):
        verify_ledger(ledger_dir, trust_any_authority=True)
    (ledger_dir / "head.json").write_bytes(head)
    verify_ledger(ledger_dir, trust_any_authority=True)


def test_truncated_bytes_are_a_torn_tail_reported_not_dropped(ledger_dir: Path) -> None:
    data = (ledger_dir / "ledger.jsonl").read_bytes()
    (ledger_dir / "ledger.jsonl").write_bytes(data[:-40])
    # the last entry is now torn; the head still names it, so the ledger does not verify
    with pytest.raises(TruncatedLedgerError):
        verify_ledger(ledger_dir, trust_any_authority=True)
    with pytest.raises(TornTailError):
        verify_ledger(ledger_dir, strict=True, trust_any_authority=True)


def test_foreign_or_spliced_line_is_malformed(ledger_dir: Path) -> None:
    lines = _lines(ledger_dir)
    lines[1] = lines[1].replace(b'"seq":1', b'"seq": 1')
    _write(ledger_dir, lines)
    with pytest.raises(MalformedEntryError, match="canonical"):
        verify_ledger(ledger_dir, trust_any_authority=True)


def test_unknown_entry_version_is_refused(ledger_dir: Path) -> None:
    lines = _lines(ledger_dir)
    lines[1] = lines[1].replace(b'"version":1', b'"version":9')
    _write(ledger_dir, lines)
    with pytest.raises(FormatVersionError):
        verify_ledger(ledger_dir, trust_any_authority=True)


def test_init_refuses_to_overwrite(ledger_dir: Path, owner: OwnerIdentity) -> None:
    before = (ledger_dir / "ledger.jsonl").read_bytes()
    with pytest.raises(LedgerError, match="already exists"):
        Ledger.init(ledger_dir, owner)
    assert (ledger_dir / "ledger.jsonl").read_bytes() == before


def test_append_needs_owner_and_valid_event(ledger_dir: Path, owner: OwnerIdentity) -> None:
    with pytest.raises(LedgerError, match="owner key"):
        Ledger.open(ledger_dir).append("note", {})
    with pytest.raises(ValueError, match="event name"):
        Ledger.open(ledger_dir, owner).append("Bad Event", {})
    with pytest.raises(LedgerError, match="no ledger"):
        Ledger.open(ledger_dir / "nope")


def test_owner_key_file_is_encrypted_and_round_trips(tmp_path: Path) -> None:
    owner = OwnerIdentity.generate()
    path = owner.save(tmp_path / "owner.pem", PASSPHRASE)
    document = json.loads(path.read_text())
    assert document["format"] == "tracemark-owner-key" and document["encryption"]["kdf"] == "scrypt"
    assert path.stat().st_mode & 0o777 == 0o600
    assert OwnerIdentity.load(path, PASSPHRASE).fingerprint() == owner.fingerprint()
    assert load_public_key(f"{path}.pub.pem").public_bytes_raw() == owner.public_key.public_bytes_raw()
    with pytest.raises(WrongPassphraseError):
        OwnerIdentity.load(path, "wrong")
    with pytest.raises(WrongPassphraseError):
        OwnerIdentity.load(path, "")
    with pytest.raises(KeyFileError):
        OwnerIdentity.load(tmp_path / "absent.pem", PASSPHRASE)
    with pytest.raises(ValueError):
        owner.save(tmp_path / "plain.pem", "")
