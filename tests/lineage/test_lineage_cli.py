"""``tracemark lineage new`` and ``lineage check`` end to end, with the ledger commitment."""

from __future__ import annotations

import json

import tracemark as tm
from tests.cli_runs import cli_error, run
from tracemark.ledger import Ledger, OwnerIdentity


def test_new_then_check_a_copy_and_an_independent_model(built, fine_tuned, independent, tmp_path, monkeypatch):
    owner = OwnerIdentity.generate()
    owner.save(tmp_path / "owner.key", "pw")
    ledger = Ledger.init(tmp_path / "ledger", owner)
    monkeypatch.setenv("TRACEMARK_LEDGER", str(ledger.directory))
    monkeypatch.setenv("TRACEMARK_OWNER_KEY", str(tmp_path / "owner.key"))
    monkeypatch.setenv("TRACEMARK_OWNER_PASSPHRASE", "pw")
    marked = tm.save_model(built.marked, tmp_path / "marked.safetensors")
    out = tmp_path / "marked.lineage"
    result = run("lineage", "new", "--model", str(marked), "--data", "digits", "--out", str(out), "--n", "60", "--steps", "20",
                 "--epochs", "4", "--calibration-references", "5", "--json")
    made = json.loads(result.stdout)
    kept = made["lineage"]["n_inputs"]
    assert 10 <= kept <= 60 and made["pool"]["trained"] == 14 + 18 + 5 and out.is_file()
    assert (tmp_path / "lineage-pool" / "manifest.json").is_file()
    entries = [e for e in ledger.entries() if e.event == "lineage-created"]
    assert [e.payload["lineage_commitment"] for e in entries] == [made["lineage"]["commitment"]]
    again = json.loads(run("lineage", "new", "--model", str(marked), "--data", "digits", "--out", str(out), "--n", "60",
                           "--steps", "20", "--epochs", "4", "--calibration-references", "5", "--json").stdout)
    assert again["pool"]["trained"] == 0 and again["lineage"]["commitment"] == made["lineage"]["commitment"]

    copy_file = tm.save_model(fine_tuned, tmp_path / "copy.safetensors")
    checked = json.loads(run("lineage", "check", "--lineage", str(out), str(copy_file), "--alpha", "1e-3", "--json").stdout)
    assert checked["kind"] == "lineage" and checked["queries"] == kept and checked["decision"] == "copy"
    assert checked["commitment"]["committed_at"] is not None and "ledger entry 1" in checked["commitment"]["vouched_by"]
    other = tm.save_model(independent, tmp_path / "other.safetensors")
    assert json.loads(run("lineage", "check", "--lineage", str(out), str(other), "--json").stdout)["decision"] != "copy"
    assert "lineage: COPY" in run("lineage", "check", "--lineage", str(out), str(copy_file), "--alpha", "1e-3").stdout


def test_missing_file_and_bad_n_are_one_line(tmp_path, capsys, monkeypatch):
    assert "no lineage file" in cli_error(capsys, monkeypatch, "lineage", "check", "--lineage", str(tmp_path / "x"), "m.onnx")
    assert "--n 500" in cli_error(capsys, monkeypatch, "lineage", "new", "--model", "m", "--out", str(tmp_path / "o"), "--n", "500")
