"""A lineage fingerprint beyond local files: checked over HTTP against the real server (``lineage check --url``),
made for a user's own module (``lineage new --arch``), and revealed in an evidence bundle that a third party
re-checks offline against the ledger's commitment."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from safetensors.torch import save_file

import tracemark as tm
from tests.cli_runs import app, cli_error, run, runner
from tests.servers import serve_app
from tests.user_models import small_residual
from tracemark.ledger import Ledger, OwnerIdentity, export_bundle, obtain_timestamp, record_verification, verify_bundle
from tracemark.ledger.bundle import _check_lineage_reveals, _late_commitments, read_members
from tracemark.ledger.chain import parse_entries
from tracemark.ledger.errors import BundleMemberError, LineageRevealError
from tracemark.lineage import LineageEvidence, read_lineage, record
from tracemark.serve import ClientStore, ServeConfig, create_app, from_module


def test_check_over_http_asks_each_input_once_and_matches_the_local_result(built, fine_tuned, independent, tmp_path, monkeypatch):
    lineage = read_lineage(built.file)
    for model, decision in ((fine_tuned, "copy"), (independent, "no-evidence")):
        local = LineageEvidence(lineage).test(tm.TorchTarget(model), alpha=1e-3)
        config = ServeConfig(model="in-memory", clients_db=str(tmp_path / f"{decision}.sqlite"),
                             audit_db=str(tmp_path / f"{decision}-audit.sqlite"))
        app = create_app(from_module(model, "suspect"), config)
        issued = ClientStore(config.clients_db).add("verifier")
        monkeypatch.setenv("TRACEMARK_API_KEY", issued.token)
        with serve_app(app) as url:
            out = run("lineage", "check", "--lineage", str(built.file), "--url", f"{url}/v1/predict", "--alpha", "1e-3",
                      "--batch-size", "25", "--transcript", str(tmp_path / f"{decision}.json"), "--json")
            asked = app.state.server.audit.count(client_id=issued.client.id)
        remote = json.loads(out.stdout)
        assert remote["decision"] == local.decision == decision
        assert remote["details"]["matches"] == local.details["matches"] and remote["p_value"] == local.p_value
        assert asked == remote["queries"] == len(lineage.labels)
        saved = json.loads((tmp_path / f"{decision}.json").read_text())
        assert saved["queries_used"] == len(lineage.labels) and len(saved["records"]) == -(-len(lineage.labels) // 25)


def test_check_needs_exactly_one_suspect(built):
    for extra in ((), ("m.onnx", "--url", "http://127.0.0.1:9/v1/predict")):
        result = runner.invoke(app, ["lineage", "check", "--lineage", str(built.file), *extra])
        assert result.exit_code == 2 and "exactly one suspect" in result.output


def test_new_for_a_users_own_module(digits, tmp_path):
    model = small_residual()
    tm.fit(model, tm.to_tensor_dataset(digits.x_train, digits.y_train), epochs=6, seed=0)
    weights = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(weights))
    out = tmp_path / "user.lineage"
    arch = "tests.user_models:small_residual"
    made = json.loads(run("lineage", "new", "--arch", arch, "--model", str(weights), "--data", "digits", "--out", str(out),
                          "--n", "30", "--steps", "15", "--epochs", "1", "--calibration-references", "5", "--json").stdout)
    assert made["lineage"]["input_shape"] == [1, 8, 8] and 1 <= made["lineage"]["n_inputs"] <= 30
    manifest = json.loads((tmp_path / "lineage-pool" / "manifest.json").read_text())
    archs = {record["arch"] for record in manifest["members"].values()}
    assert "source" in archs and "small_cnn" in archs  # fine-tuned copies of the user's module; extraction into the stand-in
    same = json.loads(run("lineage", "check", "--lineage", str(out), "--arch", arch, str(weights), "--json").stdout)
    assert same["details"]["matches"] == made["lineage"]["n_inputs"]  # the source itself gives every expected answer


def test_bad_pool_arch_is_one_line(tmp_path, capsys, monkeypatch):
    line = cli_error(capsys, monkeypatch, "lineage", "new", "--model", str(tmp_path / "m.safetensors"), "--out",
                     str(tmp_path / "o"), "--pool-arch", "vgg99")
    assert "--pool-arch 'vgg99'" in line and "small_cnn" in line


@pytest.fixture
def ledger_with_lineage(built, tmp_path, tsa, authority) -> tuple[Ledger, OwnerIdentity]:
    owner = OwnerIdentity.generate()
    ledger = Ledger.init(tmp_path / "ledger", owner)
    record(ledger, built.build.lineage)
    obtain_timestamp(ledger, tsa.url, authority.chain_pem.read_bytes(), timeout=10)
    return ledger, owner


def test_bundle_reveals_the_lineage_and_a_verifier_rechecks_it(built, fine_tuned, ledger_with_lineage, tmp_path):
    ledger, owner = ledger_with_lineage
    lineage = built.build.lineage
    evidence = LineageEvidence.load(built.file, ledger=ledger.directory)
    combined = tm.evidence.verify_all(tm.TorchTarget(fine_tuned), [evidence], 1e-3)
    record_verification(ledger, combined)
    out = tmp_path / "bundle.zip"
    export_bundle(ledger.directory, out, owner, lineages=[lineage])
    report = verify_bundle(out, expected_key=owner.public_key, trust_any_authority=True)
    [entry] = report.lineages
    assert entry["lineage_commitment"] == lineage.commitment() and entry["revealed"] and entry["timestamped"]
    assert not any("lineage" in w for w in report.warnings)  # committed, time-stamped and revealed before the check
    assert "inputs and answers re-hashed and match" in str(report)
    # the verifier gets the fingerprint itself and can ask a suspect again
    members = read_members(out)
    revealed = tmp_path / "revealed.lineage"
    revealed.write_bytes(members[f"lineages/{lineage.commitment()}.lineage"])
    assert LineageEvidence.load(revealed).test(tm.TorchTarget(fine_tuned), alpha=1e-3).decision == "copy"

    unrevealed = verify_bundle(export_bundle(ledger.directory, tmp_path / "b2.zip", owner).bundle, trust_any_authority=True)
    assert not unrevealed.lineages[0]["revealed"] and any("not revealed" in w and "lineage" in w for w in unrevealed.warnings)


def test_a_swapped_or_uncommitted_lineage_is_refused(built, ledger_with_lineage, tmp_path):
    ledger, owner = ledger_with_lineage
    lineage = built.build.lineage
    other = replace(lineage, labels=(lineage.labels + 1) % lineage.num_classes)
    with pytest.raises(LineageRevealError, match="not committed"):
        export_bundle(ledger.directory, tmp_path / "x.zip", owner, lineages=[other])
    with pytest.raises(LineageRevealError, match="source_sha256 differ"):
        export_bundle(ledger.directory, tmp_path / "y.zip", owner, lineages=[replace(lineage, source_sha256="0" * 64)])
    assert not (tmp_path / "x.zip").exists() and not (tmp_path / "y.zip").exists()

    out = export_bundle(ledger.directory, tmp_path / "b.zip", owner, lineages=[lineage]).bundle
    members = read_members(out)
    name = f"lineages/{lineage.commitment()}.lineage"
    members[name] = other.encode()
    extracted = tmp_path / "extracted"
    for member, data in members.items():
        (extracted / member).parent.mkdir(parents=True, exist_ok=True)
        (extracted / member).write_bytes(data)
    with pytest.raises(BundleMemberError):  # the signed manifest catches the swap first ...
        verify_bundle(extracted, trust_any_authority=True)
    entries = parse_entries(members["ledger.jsonl"], "ledger")[0]
    with pytest.raises(LineageRevealError, match="not the one its name gives"):  # ... and the reveal check on its own
        _check_lineage_reveals(members, entries)
    members[name] = b"\x00" * 8
    with pytest.raises(LineageRevealError, match="cannot be read"):
        _check_lineage_reveals(members, entries)


def test_a_verdict_using_a_lineage_committed_later_is_flagged():
    verdict = {"verdict": "copy", "components": [{"kind": "lineage", "commitment": {"digest": "ab" * 32}},
                                                 {"kind": "trigger", "commitment": {"digest": "cd" * 32}}]}
    assert _late_commitments(verdict, 5, {"ab" * 32: 2, "cd" * 32: 1}) == []
    [late] = _late_commitments(verdict, 5, {"ab" * 32: 7, "cd" * 32: 1})
    assert "lineage commitment abababab" in late and "entry 5" in late
    [never] = _late_commitments(verdict, 5, {"cd" * 32: 1})  # a lineage this ledger never committed
    assert "lineage" in never
    assert len(_late_commitments({"key_commitment": "cd" * 32}, 1, {"cd" * 32: 3})) == 1


def test_export_with_a_missing_lineage_file_is_one_line(tmp_path, capsys, monkeypatch):
    line = cli_error(capsys, monkeypatch, "evidence", "export", str(tmp_path / "ledger"), "--out", str(tmp_path / "b.zip"),
                     "--owner-key", str(tmp_path / "owner.key"), "--lineage", str(tmp_path / "absent.lineage"))
    assert "no lineage file" in line and not (tmp_path / "b.zip").exists()
