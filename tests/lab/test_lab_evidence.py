"""The lab with other kinds of evidence: each stolen model is tested with every kind, and the record says which survived."""

from __future__ import annotations

import copy
import json

import pytest

from tracemark.attacks import Distill, FineTune
from tracemark.evidence import WeightEvidence
from tracemark.fingerprint import FingerprintScheme
from tracemark.fingerprint.weights import add_weight_code
from tracemark.lab import SuiteResult, run_suite
from tracemark.report import robustness_report


@pytest.fixture(scope="module")
def coded_result(models, lab_thief) -> SuiteResult:
    """A customer's weight-coded copy of the marked model, attacked by a fine-tune and a distillation."""
    scheme = FingerprintScheme.from_key(models.key)
    victim = copy.deepcopy(models.marked)
    add_weight_code(victim, scheme, "customer-7")
    evidence = [WeightEvidence(scheme, ["customer-6", "customer-7", "customer-8"], models.marked)]
    attacks = [FineTune("FTAL", n_samples=300, epochs=2, lr=5e-4), Distill(arch="mlp", n_queries=600, epochs=10)]
    data = models.data
    return run_suite(attacks, victim, models.key, (data.x_test, data.y_test), lab_thief, dataset="digits",
                     evidence=evidence)


def test_each_record_says_which_evidence_survived(coded_result):
    tune, distil = coded_result.records
    assert set(tune.evidence) == set(distil.evidence) == {"trigger", "weights"}
    # fine-tuning keeps both the trigger mark and the weight code; the family rejects both
    assert tune.combined_verdict == "copy" and tune.survived_by == ["trigger", "weights"]
    assert "customer-7" in tune.evidence["weights"]["summary"]
    # a distilled MLP has none of the base's weights: the weight code cannot be read, only the triggers could carry
    assert distil.evidence["weights"]["decision"] == "inconclusive" and "weights" not in distil.survived_by
    assert distil.combined_verdict == ("copy" if distil.survived_by else "no-evidence")
    assert distil.removed_all == (distil.within_budget and not distil.survived_by)
    assert coded_result.config["evidence"] == ["weights"]


def test_combined_records_round_trip_and_render(coded_result, models, tmp_path):
    again = SuiteResult.load_json(coded_result.save_json(tmp_path / "result.json"))
    assert [r.evidence for r in again.records] == [r.evidence for r in coded_result.records]
    assert json.loads((tmp_path / "result.json").read_text())["records"][0]["combined_verdict"] == "copy"
    text = str(coded_result)
    assert "evidence combined (trigger, weights" in text and "survived by: trigger, weights" in text
    html = robustness_report(coded_result, tmp_path / "report.html", models.key.triggers()).read_text()
    assert "Which evidence survived each attack" in html and "<th>weights</th>" in html


def test_without_extra_evidence_records_are_as_before(models, lab_thief):
    data = models.data
    result = run_suite([FineTune("FTAL", n_samples=300, epochs=1, lr=5e-4)], models.marked, models.key,
                       (data.x_test, data.y_test), lab_thief)
    record = result.records[0]
    assert record.combined_verdict is None and record.evidence == {} and not record.removed_all
    assert not result.combined and "evidence combined" not in str(result)


def test_cli_robustness_refuses_a_bad_lineage_file_before_any_work(tmp_path, capsys, monkeypatch):
    from tests.cli_runs import cli_error

    bogus = tmp_path / "marked.lineage"
    bogus.write_bytes(b"not a lineage file at all")
    line = cli_error(capsys, monkeypatch, "robustness", "--lineage", str(bogus), "--out", str(tmp_path / "out"))
    assert "marked.lineage" in line
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written
