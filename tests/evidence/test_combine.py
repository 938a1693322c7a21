"""The combined verdict: Holm's arithmetic on hand-made results, the commitment-after-suspect flag (also from a real
ledger), ``verify_all`` over real kinds, and ``tracemark verify`` printing every component and the combination."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

import tracemark as tm
from tests.cli_runs import cli_error, run
from tests.evidence.conftest import CUSTOMERS, save_all
from tracemark.evidence import (Commitment, EvidenceError, EvidenceResult, TraceEvidence, TriggerEvidence, WeightEvidence,
                                combine, holm, verify_all)
from tracemark.evidence.combine import LATE_COMMITMENT
from tests.ledger._tsa import LocalTSA, make_authority
from tracemark.evidence.commitments import parse_ledger_time
from tracemark.fingerprint import record_customer_code
from tracemark.ledger import Ledger, OwnerIdentity, obtain_timestamp, record_key_created
from tracemark.targets import CallableTarget, TorchTarget

NOON = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def result(kind: str, p: float, decision: str = "no-evidence", committed_at: datetime | None = None) -> EvidenceResult:
    return EvidenceResult(kind, decision, p, 0.05, "exact", "hand-made", 10, "suspect",  # type: ignore[arg-type]
                          Commitment("ab" * 32, committed_at, "by hand"))


def test_holm_adjusts_step_down_and_rejects_more_than_bonferroni() -> None:
    ps = [0.012, 0.005, 0.3]
    assert holm(ps) == pytest.approx([0.024, 0.015, 0.3])  # 3 x 0.005, max(that, 2 x 0.012), max(that, 0.3)
    combined = combine([result("a", 0.012), result("b", 0.005), result("c", 0.3)], 0.025)
    assert [c.rejected for c in combined.components] == [True, True, False]  # Bonferroni would keep a (0.036)
    assert combined.verdict == "copy" and combined.p_value == pytest.approx(0.015)
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])  # the running maximum
    assert holm([0.9, 0.3]) == pytest.approx([0.9, 0.6]) and holm([0.6, 0.7, 0.8]) == [1.0, 1.0, 1.0]  # capped at 1


def test_inconclusive_components_count_in_the_family_but_are_never_rejected() -> None:
    alone = combine([result("a", 0.01, "copy")], 0.015)
    assert alone.verdict == "copy" and alone.p_value == pytest.approx(0.01)
    # the inconclusive component has the smaller p-value, but counts only as a member of the family: m = 2
    mixed = combine([result("a", 0.01, "copy"), result("b", 0.001, "inconclusive")], 0.015)
    assert mixed.verdict == "no-evidence" and mixed.p_value == pytest.approx(0.02)
    assert [c.p_adjusted for c in mixed.components] == pytest.approx([0.02, 1.0])
    assert not any(c.rejected for c in mixed.components)
    assert combine([result("a", 1.0, "inconclusive"), result("b", 0.4, "inconclusive")], 0.05).verdict == "inconclusive"
    assert combine([result("a", 1.0, "inconclusive"), result("b", 0.4)], 0.05).verdict == "no-evidence"
    assert combine([result("a", 0.2), result("b", 0.4)], 0.05).verdict == "no-evidence"


def test_a_commitment_not_before_the_suspect_is_flagged_and_cannot_count() -> None:
    early, late = result("early", 0.3, committed_at=NOON - timedelta(days=1)), result("late", 1e-12, "copy", NOON)
    counted = combine([early, late], 1e-6)  # without a first-seen time nothing is flagged
    assert counted.verdict == "copy" and counted.components[1].rejected
    flagged = combine([early, late], 1e-6, suspect_seen=NOON)  # committed exactly when the suspect was seen
    assert flagged.verdict == "no-evidence" and flagged.p_value == pytest.approx(0.6)  # still 2 in the family
    assert [c.counts for c in flagged.components] == [True, False] and not flagged.components[1].rejected
    assert flagged.components[1].note == LATE_COMMITMENT and LATE_COMMITMENT in str(flagged)
    assert combine([early, late], 1e-6, suspect_seen=NOON + timedelta(seconds=1)).verdict == "copy"
    naive = combine([late], 1e-6, suspect_seen=datetime(2026, 3, 1, 12, 0, 1))  # read as UTC
    assert naive.verdict == "copy" and naive.suspect_seen.tzinfo is timezone.utc
    unvouched = combine([result("x", 1e-12, "copy")], 1e-6, suspect_seen=NOON)  # no time: counts, with a note
    assert unvouched.verdict == "copy" and "no vouched commitment time" in unvouched.components[0].note


def test_combined_verdict_is_a_json_value_with_every_component() -> None:
    combined = combine([result("a", 0.012), result("b", 0.005), result("c", 0.3)], 0.025, suspect_seen=NOON)
    doc = json.loads(json.dumps(combined.to_dict(), allow_nan=False))
    assert doc["verdict"] == "copy" and doc["alpha"] == 0.025 and doc["p_value"] == pytest.approx(0.015)
    assert doc["suspect_seen"] == NOON.isoformat() and doc["method"] == "holm"
    assert [(c["kind"], c["rejected"]) for c in doc["components"]] == [("a", True), ("b", True), ("c", False)]
    assert doc["components"][1]["p_adjusted"] == pytest.approx(0.015) and doc["components"][1]["p_value"] == 0.005
    text = str(combined)
    assert text.startswith("combined verdict: COPY") and "family-wise over 3 kinds of evidence (a, b, c" in text
    assert text.count("REJECTED") == 2


def test_bad_combinations_are_named_errors() -> None:
    with pytest.raises(EvidenceError, match="no evidence"):
        combine([], 1e-9)
    with pytest.raises(EvidenceError, match="alpha"):
        combine([result("a", 0.1)], 1.5)
    with pytest.raises(EvidenceError, match="not evidence"):
        verify_all(CallableTarget(lambda x: np.zeros(len(x), dtype=np.int64)), [object()])  # type: ignore[list-item]


def test_trigger_commitment_time_comes_from_the_ledger(tmp_path, owned) -> None:
    ledger = Ledger.init(tmp_path / "ledger", OwnerIdentity.generate())
    before = datetime.now(timezone.utc)
    unrecorded = TriggerEvidence(owned.key, ledger=ledger).commitment()
    assert unrecorded.committed_at is None and "not committed" in unrecorded.vouched_by
    entry = record_key_created(ledger, owned.key)
    commitment = TriggerEvidence(owned.key, ledger=ledger).commitment()
    assert commitment.digest == owned.key.commitment() and before <= commitment.committed_at <= datetime.now(timezone.utc)
    assert f"entry #{entry.seq}" in commitment.vouched_by and "not time-stamped yet" in commitment.vouched_by
    evidence = [TriggerEvidence(owned.key, ledger=ledger)]
    target = TorchTarget(owned.base)
    assert verify_all(target, evidence, suspect_seen=before - timedelta(days=1)).verdict == "no-evidence"
    assert verify_all(target, evidence, suspect_seen=before + timedelta(days=1)).verdict == "copy"

    # a real RFC 3161 authority time-stamps the entry: its token's time is the one that counts
    authority = make_authority(tmp_path / "tsa")
    with LocalTSA(authority) as tsa:
        obtain_timestamp(ledger, tsa.url, authority.chain_pem.read_bytes(), timeout=10)
    stamped = TriggerEvidence(owned.key, ledger=ledger).commitment()
    assert "RFC 3161 token" in stamped.vouched_by and stamped.digest == commitment.digest
    assert commitment.committed_at - timedelta(seconds=1) <= stamped.committed_at <= datetime.now(timezone.utc)


def test_customer_codes_are_committed_when_the_last_code_was(tmp_path, owned) -> None:
    ledger = Ledger.init(tmp_path / "ledger", OwnerIdentity.generate())
    for customer in CUSTOMERS[:2]:
        record_customer_code(ledger, owned.scheme, customer)
    assert TraceEvidence(owned.scheme, CUSTOMERS, ledger=ledger).commitment().committed_at is None  # one is missing
    last = record_customer_code(ledger, owned.scheme, CUSTOMERS[2])
    trace_commitment = TraceEvidence(owned.scheme, CUSTOMERS, ledger=ledger).commitment()
    weight_commitment = WeightEvidence(owned.scheme, CUSTOMERS, owned.base, ledger=ledger).commitment()
    assert trace_commitment.committed_at == weight_commitment.committed_at == parse_ledger_time(last.time)
    assert trace_commitment.digest != weight_commitment.digest  # each kind commits to its own use of the codes
    assert TraceEvidence(owned.scheme, CUSTOMERS[::-1]).commitment().digest == trace_commitment.digest


def test_verify_all_combines_real_kinds_and_a_kind_that_cannot_ask(owned, independents) -> None:
    remote = CallableTarget(lambda x: owned.customer_copy(__import__("torch").from_numpy(x)).detach().numpy(), "an API")
    evidence = [TriggerEvidence(owned.key), TraceEvidence(owned.scheme, CUSTOMERS),
                WeightEvidence(owned.scheme, CUSTOMERS, owned.base)]
    combined = tm.verify_all(remote, evidence, alpha=1e-9)
    kinds = {c.result.kind: c for c in combined.components}
    assert combined.verdict == "copy" and kinds["trigger"].rejected and kinds["customer-code"].rejected
    assert kinds["weights"].result.decision == "inconclusive" and not kinds["weights"].rejected
    smallest = min(c.result.p_value for c in combined.components)
    assert combined.p_value == pytest.approx(min(1.0, 3 * smallest))
    independent = tm.verify_all(TorchTarget(independents[1]), evidence, alpha=1e-9)
    assert independent.verdict == "no-evidence" and independent.p_value > 1e-9


@pytest.fixture(scope="module")
def files(owned, independents, tmp_path_factory):
    return save_all(owned, independents[0], tmp_path_factory.mktemp("verify"))


def test_cli_verify_runs_every_kind_and_prints_the_combination(files, owned) -> None:
    common = ["verify", "--key", str(files / "master.key"), "--registry", str(files / "registry.sqlite"),
              "--base", str(files / "base.safetensors"), "--responses-db", str(owned.store.path)]
    doc = json.loads(run(*common, "--model", str(files / "acme.safetensors"), "--json").output)
    assert doc["verdict"] == "copy" and doc["p_value"] <= 1e-9 and doc["alpha"] == 1e-9
    components = {c["kind"]: c for c in doc["components"]}
    assert list(components) == ["trigger", "customer-code", "weights", "responses"]
    assert all(components[k]["rejected"] for k in ("trigger", "customer-code", "weights"))
    assert not components["responses"]["rejected"] and components["weights"]["details"]["customer"] == "acme"
    assert components["customer-code"]["details"]["customer"] == "acme"

    text = run(*common, "--model", str(files / "clone.safetensors")).output
    assert text.startswith("combined verdict: COPY") and "responses: COPY" in text
    assert text.count("family: Holm-adjusted") == 4

    doc = json.loads(run(*common, "--model", str(files / "independent.safetensors"), "--json").output)
    assert doc["verdict"] == "no-evidence" and not any(c["rejected"] for c in doc["components"])
    weights = next(c for c in doc["components"] if c["kind"] == "weights")
    assert weights["decision"] == "inconclusive" and "another architecture" in weights["summary"]


def test_cli_verify_with_the_key_alone_prints_the_trigger_verdict_as_before(files) -> None:
    doc = json.loads(run("verify", "--key", str(files / "master.key"), "--model", str(files / "base.safetensors"),
                         "--json").output)
    assert doc["verdict"] == "copy" and "components" not in doc and doc["matches"] >= 90 and "key_commitment" in doc
    assert run("verify", "--key", str(files / "master.key"), "--model", str(files / "base.safetensors")).output.startswith(
        "verdict: COPY")


def test_cli_suspect_seen_needs_a_time_zone(files, capsys, monkeypatch) -> None:
    line = cli_error(capsys, monkeypatch, "verify", "--key", str(files / "master.key"), "--model",
                     str(files / "base.safetensors"), "--suspect-seen", "2026-03-01T12:00:00")
    assert "InvalidOptionError" in line and "no time zone" in line
    doc = json.loads(run("verify", "--key", str(files / "master.key"), "--model", str(files / "base.safetensors"),
                         "--suspect-seen", "2026-03-01T12:00:00Z", "--json").output)
    assert doc["verdict"] == "copy" and doc["components"][0]["note"].startswith("no vouched commitment time")


def test_cli_verify_adds_the_lineage_kind(files, owned, independents, models) -> None:
    from tracemark.lineage import Lineage, calibrate

    inputs = np.round(models.data.x_test[:100] * 255).astype(np.uint8)
    labels = tm.predict_labels(owned.base, inputs.astype(np.float32) / np.float32(255))
    calibration = calibrate(inputs, labels, [TorchTarget(m) for m in independents])  # 3 references: too few for alpha
    lineage = Lineage(inputs, labels, 10, calibration, {}, {}, "0" * 64, "2026-03-01T12:00:00.000000Z")
    path = lineage.save(files / "base.lineage")
    doc = json.loads(run("verify", "--key", str(files / "master.key"), "--model", str(files / "base.safetensors"),
                         "--lineage", str(path), "--json").output)
    trigger, found = doc["components"]
    assert doc["verdict"] == "copy" and found["kind"] == "lineage" and found["decision"] == "inconclusive"
    assert found["commitment"]["digest"] == lineage.commitment() and not found["rejected"]
    assert trigger["p_adjusted"] == pytest.approx(min(1.0, 2 * trigger["p_value"]))  # the lineage kind counts in the family
    alone = json.loads(run("verify", "--model", str(files / "independent.safetensors"), "--lineage", str(path),
                           "--json").output)
    assert alone["verdict"] == "inconclusive" and [c["kind"] for c in alone["components"]] == ["lineage"]


def test_cli_verify_reads_commitment_times_from_the_ledger_and_records_the_combination(files, owned, tmp_path,
                                                                                      monkeypatch) -> None:
    owner = OwnerIdentity.generate()
    owner.save(tmp_path / "owner.key", "owner pass")
    monkeypatch.setenv("TRACEMARK_OWNER_KEY", str(tmp_path / "owner.key"))
    monkeypatch.setenv("TRACEMARK_OWNER_PASSPHRASE", "owner pass")
    ledger = Ledger.init(tmp_path / "ledger", owner)
    created = parse_ledger_time(record_key_created(ledger, owned.key).time)
    common = ["verify", "--key", str(files / "master.key"), "--model", str(files / "base.safetensors"),
              "--registry", str(files / "registry.sqlite"), "--ledger", str(ledger.directory), "--json"]
    before = created - timedelta(hours=1)
    doc = json.loads(run(*common, "--suspect-seen", before.isoformat()).output)
    trigger, codes = doc["components"]
    assert trigger["commitment"]["committed_at"] == created.isoformat() and trigger["note"] == LATE_COMMITMENT
    assert not trigger["counts"] and not trigger["rejected"] and doc["verdict"] == "no-evidence"
    assert codes["commitment"]["committed_at"] is None and codes["decision"] == "no-evidence"  # the base carries no code
    doc = json.loads(run(*common, "--suspect-seen", (created + timedelta(hours=1)).isoformat()).output)
    assert doc["verdict"] == "copy" and doc["components"][0]["counts"]
    recorded = [e for e in ledger.entries() if e.event == "verification"]
    assert [e.payload["verdict"] for e in recorded] == ["no-evidence", "copy"]
    assert recorded[-1].payload["p_value"] == doc["p_value"] and recorded[-1].payload["alpha"] == 1e-9
