"""The commitment lands in the ledger, is time-stamped by a real local RFC 3161 authority, and a fingerprint
committed after the suspect was seen is flagged."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from tests.ledger._tsa import LocalTSA, make_authority
from tracemark.ledger import Ledger, OwnerIdentity, obtain_timestamp, verify_ledger
from tracemark.ledger.timestamp import load_certificates
from tracemark.lineage import LineageEvidence, committed, record
from tracemark.targets.local import TorchTarget


def test_commitment_is_recorded_time_stamped_and_dated(built, fine_tuned, tmp_path):
    lineage = built.build.lineage
    ledger = Ledger.init(tmp_path / "ledger", OwnerIdentity.generate())
    assert committed(ledger.directory, lineage.commitment()).committed_at is None
    entry = record(ledger, lineage)
    assert entry.event == "lineage-created" and entry.payload["lineage_commitment"] == lineage.commitment()
    assert entry.payload["n_inputs"] == 100 and entry.payload["null_rate"] == lineage.calibration.rate
    signed = committed(ledger.directory, lineage.commitment())
    assert signed.committed_at is not None and "not yet time-stamped" in signed.vouched_by

    authority = make_authority(tmp_path / "tsa")
    with LocalTSA(authority) as tsa:
        obtain_timestamp(ledger, tsa.url, authority.chain_pem.read_bytes(), timeout=10)
    report = verify_ledger(ledger.directory, trusted_roots=load_certificates(authority.ca_pem.read_bytes(), "root"))
    assert report.events["lineage-created"] == 1 and not report.untimestamped
    stamped = committed(ledger.directory, lineage.commitment())
    assert "RFC 3161 token" in stamped.vouched_by and abs(stamped.committed_at - signed.committed_at) < timedelta(minutes=5)

    later = LineageEvidence.load(built.file, ledger=ledger.directory, suspect_since=stamped.committed_at + timedelta(days=1))
    ok = later.test(TorchTarget(fine_tuned), alpha=1e-9)
    assert ok.decision == "copy" and ok.details["commitment_predates_suspect"] is True
    assert ok.commitment.committed_at == stamped.committed_at

    earlier = LineageEvidence.load(built.file, ledger=ledger.directory, suspect_since=datetime(2020, 1, 1, tzinfo=timezone.utc))
    flagged = earlier.test(TorchTarget(fine_tuned), alpha=1e-9)
    assert flagged.decision == "inconclusive" and flagged.details["commitment_predates_suspect"] is False
    assert "not older than the suspect" in flagged.summary and flagged.p_value <= 1e-9
