"""RFC 3161 round trips against a real local ``openssl ts`` authority."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.ledger._tsa import Authority, LocalTSA, make_authority
from tracemark.errors import TimestampError
from tracemark.ledger import Ledger, OwnerIdentity, obtain_timestamp, verify_ledger, verify_token
from tracemark.ledger.errors import (
    AuthorityCertificateExpiredError,
    ImprintMismatchError,
    TokenTamperedError,
    UntrustedAuthorityError,
)
from tracemark.ledger.merkle import merkle_root
from tracemark.ledger.timestamp import decode_record, load_certificates, pending_entries, request_token


def _chain(authority: Authority) -> list[x509.Certificate]:
    return load_certificates(authority.chain_pem.read_bytes(), "chain")


def test_round_trip_covers_pending_entries_with_one_merkle_root(ledger_dir: Path, authority: Authority) -> None:
    ledger = Ledger.open(ledger_dir)
    entries = ledger.entries()
    stamped = next(e for e in entries if e.event == "timestamped")
    assert (stamped.payload["first_seq"], stamped.payload["last_seq"]) == (0, 3)
    record = decode_record((ledger_dir / stamped.payload["record"]).read_bytes(), "record")
    assert record.root == merkle_root([e.hash for e in entries[:4]])
    ca = x509.load_pem_x509_certificate(authority.ca_pem.read_bytes())
    info = record.verify(entries, trusted_roots=[ca])
    assert info.authority == "CN=Test TSA"
    assert info.root_fingerprint == ca.fingerprint(hashes.SHA256()).hex()
    gen = dt.datetime.strptime(info.gen_time, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    assert abs((gen - dt.datetime.now(dt.timezone.utc)).total_seconds()) < 120
    # pending is now only the packaged entry; a second run covers exactly it
    assert [e.event for e in pending_entries(entries)] == ["timestamped", "model-packaged"]


def test_second_timestamp_then_nothing_pending(ledger_dir: Path, owner: OwnerIdentity, tsa: LocalTSA, authority: Authority) -> None:
    ledger = Ledger.open(ledger_dir, owner)
    entry, _ = obtain_timestamp(ledger, tsa.url, authority.chain_pem.read_bytes(), timeout=10)
    assert (entry.payload["first_seq"], entry.payload["last_seq"]) == (4, 5)
    assert obtain_timestamp(ledger, tsa.url, authority.chain_pem.read_bytes(), timeout=10) is None
    report = verify_ledger(ledger_dir, trusted_roots=[x509.load_pem_x509_certificate(authority.ca_pem.read_bytes())])
    assert len(report.tokens) == 2 and report.untimestamped == []


def test_token_for_other_data_is_refused(tsa: LocalTSA, authority: Authority) -> None:
    response, nonce = request_token(tsa.url, b"entry A", timeout=10)
    assert verify_token(response, b"entry A", _chain(authority), nonce=nonce).authority == "CN=Test TSA"
    with pytest.raises(ImprintMismatchError):
        verify_token(response, b"entry B", _chain(authority))


def test_swapped_token_record_is_refused(ledger_dir: Path, owner: OwnerIdentity, tsa: LocalTSA, authority: Authority) -> None:
    """A token honestly obtained for other data, put in place of the stored one, does not verify."""
    ledger = Ledger.open(ledger_dir)
    stamped = next(e for e in ledger.entries() if e.event == "timestamped")
    path = ledger_dir / stamped.payload["record"]
    doc = json.loads(path.read_bytes())
    response, _ = request_token(tsa.url, b"something else", timeout=10)
    doc["response"] = response.hex()
    from tracemark._util.canonical import canonical_json

    path.write_bytes(canonical_json(doc) + b"\n")
    with pytest.raises(TokenTamperedError):  # its hash no longer matches the signed entry
        verify_ledger(ledger_dir)
    record = decode_record(path.read_bytes(), "record")
    with pytest.raises(ImprintMismatchError):  # and the token itself is for other data
        record.verify(ledger.entries())


def test_untrusted_authority_is_reported(tmp_path: Path, tsa: LocalTSA, authority: Authority) -> None:
    stranger = make_authority(tmp_path / "stranger", name="Stranger TSA")
    response, _ = request_token(tsa.url, b"data", timeout=10)
    stranger_ca = x509.load_pem_x509_certificate(stranger.ca_pem.read_bytes())
    with pytest.raises(UntrustedAuthorityError):
        verify_token(response, b"data", _chain(authority), trusted_roots=[stranger_ca])
    # a chain from a different authority cannot vouch for this token either
    with pytest.raises(UntrustedAuthorityError):
        verify_token(response, b"data", [c for c in _chain(stranger) if c.subject == c.issuer])


def test_expired_authority_certificate_is_reported(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    expired = make_authority(tmp_path / "old", name="Old TSA", tsa_valid=(now - dt.timedelta(days=10), now - dt.timedelta(days=1)))
    with LocalTSA(expired) as server:
        response, _ = request_token(server.url, b"data", timeout=10)
    with pytest.raises(AuthorityCertificateExpiredError, match="proves nothing"):
        verify_token(response, b"data", _chain(expired))


def test_certificate_expired_since_is_a_warning_not_a_failure(tsa: LocalTSA, authority: Authority) -> None:
    response, _ = request_token(tsa.url, b"data", timeout=10)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=400)
    info = verify_token(response, b"data", _chain(authority), now=later)
    assert info.authority_cert_expired_now
    assert "expired since" in str(info)


def test_unreachable_authority_and_ledger_unchanged(ledger_dir: Path, owner: OwnerIdentity, authority: Authority) -> None:
    before = (ledger_dir / "ledger.jsonl").read_bytes()
    with pytest.raises(TimestampError, match="cannot reach"):
        obtain_timestamp(Ledger.open(ledger_dir, owner), "http://127.0.0.1:9/tsa", authority.chain_pem.read_bytes(), timeout=2)
    assert (ledger_dir / "ledger.jsonl").read_bytes() == before
