"""Suites: every kind present, determinism across worker processes, JSON round trip, API-only victims, the report."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

import tracemark as tm
from tracemark.attacks import KINDS
from tracemark.lab import LabError, SuiteResult, make_suite, run_suite
from tracemark.report import robustness_report


@pytest.fixture(scope="module")
def quick_result(models, lab_thief) -> SuiteResult:
    data = models.data
    attacks = make_suite("quick", len(lab_thief.x), len(lab_thief.ood_x))
    return run_suite(attacks, models.marked, models.key, (data.x_test, data.y_test), lab_thief, suite="quick",
                     dataset="digits", workers=2)


def test_suites_cover_every_kind():
    for name in ("quick", "standard"):
        assert {a.kind for a in make_suite(name, 1000, 500)} == set(KINDS)
    # without out-of-domain images there is no out-of-domain extraction
    assert all(getattr(a, "pool", "in") == "in" for a in make_suite("standard", 1000))
    assert any(getattr(a, "pool", "in") == "ood" for a in make_suite("standard", 1000, 500))
    with pytest.raises(LabError):
        make_suite("nope", 10)


def test_parallel_run_matches_a_serial_run(models, lab_thief, quick_result):
    data = models.data
    serial = run_suite(make_suite("quick", len(lab_thief.x), len(lab_thief.ood_x))[:6], models.marked, models.key,
                       (data.x_test, data.y_test), lab_thief, workers=1)
    for a, b in zip(serial.records, quick_result.records[:6]):
        assert (a.attack, a.thief_accuracy, a.p_value, a.verdict) == (b.attack, b.thief_accuracy, b.p_value, b.verdict)


def test_summary_names_the_strongest_attack_per_kind(quick_result):
    summary = {s.kind: s for s in quick_result.summary()}
    assert set(summary) == set(KINDS)
    for kind, s in summary.items():
        candidates = [r for r in quick_result.records if r.kind == kind and (r.within_budget or not s.within_budget)]
        assert s.p_value == max(r.p_value for r in candidates)
    # weight attacks that keep accuracy leave the post-hoc mark in place
    assert summary["quantize"].verdict == "copy" and summary["quantize"].within_budget
    assert "removed" in str(quick_result).lower() or "survived" in str(quick_result).lower()


def test_json_round_trip(quick_result, tmp_path):
    path = quick_result.save_json(tmp_path / "r.json")
    payload = json.loads(path.read_text())
    assert payload["format"] == "tracemark-robustness/1" and len(payload["records"]) == len(quick_result.records)
    again = SuiteResult.load_json(path)
    assert str(again) == str(quick_result)
    assert [r.to_dict() for r in again.records] == [r.to_dict() for r in quick_result.records]


def test_an_api_only_victim_skips_weight_attacks(models, lab_thief):
    data = models.data
    api = tm.CallableTarget(lambda x: tm.TorchTarget(models.marked).predict(x).probabilities, num_classes=10)
    attacks = [a for a in make_suite("quick", 300) if a.kind in ("prune", "transform")]
    result = run_suite(attacks, api, models.key, (data.x_test, data.y_test), lab_thief)
    assert {r.kind for r in result.records} == {"transform"}
    assert len(result.config["skipped"]) == 2


def test_html_report_embeds_its_plots(quick_result, models, tmp_path):
    path = robustness_report(quick_result, tmp_path / "report.html", models.key.triggers())
    html = path.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 3
    import base64

    assert all(base64.b64decode(img).startswith(b"\x89PNG") for img in images)
    for record in quick_result.records:
        assert record.attack.replace("<", "&lt;") in html
    assert quick_result.versions["torch"] in html


def test_cli_runs_a_suite_and_writes_the_report(models, tmp_path):
    from tracemark.cli import robustness as cli_module

    model_path = tm.save_model(models.marked, tmp_path / "marked.safetensors")
    key_path = models.key.save(tmp_path / "key.json")
    app = typer.Typer()
    cli_module.register(app)

    @app.command("noop")
    def noop() -> None:  # a second command keeps typer from collapsing the app into one
        pass

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["robustness", "--suite", "quick", "--dataset", "digits", "--model", str(model_path),
                                      "--key", str(key_path), "--ood-size", "200", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["suite"] == "quick" and payload["dataset"] == "digits"
    assert (out / "report.html").is_file() and (out / "result.json").is_file()
    bad = CliRunner().invoke(app, ["robustness", "--model", str(model_path)])
    assert bad.exit_code != 0
    assert np.isclose(payload["marked_trigger_accuracy"], 1.0)


def test_cli_runs_a_suite_on_a_data_folder(models, tmp_path):
    """``--data FOLDER`` (memmap) is read item by item: a seeded tenth held out for accuracy, the thief a sixth of the rest."""
    from tracemark.cli import build_app
    from tracemark.data import write_memmap

    data = models.data
    folder = write_memmap(tmp_path / "my-digits", np.concatenate([data.x_train, data.x_test]),
                          np.concatenate([data.y_train, data.y_test]))
    model_path = tm.save_model(models.marked, tmp_path / "marked.safetensors")
    key_path = models.key.save(tmp_path / "key.json")
    out = tmp_path / "out"
    result = CliRunner().invoke(build_app(), ["robustness", "--suite", "quick", "--data", str(folder), "--model", str(model_path),
                                              "--key", str(key_path), "--thief-size", "300", "--ood-size", "200",
                                              "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["dataset"] == "my-digits" and (out / "report.html").is_file()
    assert payload["marked_accuracy"] > 0.9  # measured on the held-out tenth of the folder
    bad = CliRunner().invoke(build_app(), ["robustness", "--data", "digits", "--test-data", str(folder), "--model",
                                           str(model_path), "--key", str(key_path)])
    assert bad.exit_code == 2 and "--test-data goes with a --data folder" in bad.output
