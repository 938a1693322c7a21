"""`tracemark responses` secret/rate/export commands and the serve configuration that turns marking on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tracemark.extraction import DEFAULT_RATE, MarkingSecret, MonitorSettings, ResponseStore
from tracemark.extraction.settings import DEFAULT_BOOST
from tracemark.extraction.serving import HookChain, hook_from_config
from tracemark.serve import ClientStore, ServeConfig


def _app() -> typer.Typer:
    from tracemark.cli import build_app
    from tracemark.cli import responses as responses_cli

    app = build_app()
    if not any(getattr(g, "name", None) == "responses" for g in app.registered_groups):
        responses_cli.register(app)
    return app


def test_secret_rate_and_list_commands(tmp_path: Path) -> None:
    runner, app = CliRunner(), _app()
    secret = tmp_path / "m.secret"
    made = runner.invoke(app, ["responses", "secret", "--out", str(secret), "--json"])
    assert made.exit_code == 0, made.output
    assert os.stat(secret).st_mode & 0o777 == 0o600
    assert json.loads(made.stdout)["fingerprint"] == MarkingSecret.load(secret).fingerprint
    again = runner.invoke(app, ["responses", "secret", "--out", str(secret)])
    assert again.exit_code != 0 and "--force" in str(again.exception)
    clients = ClientStore(tmp_path / "clients.sqlite")
    alice = clients.add("alice").client
    common = ["--clients-db", str(tmp_path / "clients.sqlite"), "--responses-db", str(tmp_path / "r.sqlite")]
    assert runner.invoke(app, ["responses", "rate", "alice", "0.02", *common]).exit_code == 0
    assert ResponseStore(tmp_path / "r.sqlite").rate(alice.id) == 0.02
    listed = runner.invoke(app, ["responses", "list", "--responses-db", str(tmp_path / "r.sqlite"), "--json"])
    assert json.loads(listed.stdout)["items"] == [{"client_id": alice.id, "client_name": "alice", "marked": 0, "rate": 0.02,
                                                      "answered": 0, "spared": 0}]
    assert runner.invoke(app, ["responses", "rate", "alice", "default", *common]).exit_code == 0
    assert ResponseStore(tmp_path / "r.sqlite").rate(alice.id) is None
    bad = runner.invoke(app, ["responses", "rate", "alice", "0.7", *common])
    assert bad.exit_code != 0 and "between 0 and 0.5" in str(bad.exception)


def test_serve_config_round_trips_and_builds_the_hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = MarkingSecret.generate().save(tmp_path / "m.secret")
    config = ServeConfig(model="m", audit_db=str(tmp_path / "audit.sqlite"), responses_db=str(tmp_path / "r.sqlite"),
                         marking=True, marking_secret=str(secret), marking_rate=0.01,
                         monitor=MonitorSettings(volume=5, prior=(0.5, 0.5)))
    assert ServeConfig.from_json(config.to_json()) == config
    assert secret.read_text().split("\n")[1] not in config.to_json()  # the secret itself never travels in the config
    monkeypatch.delenv("TRACEMARK_LEDGER", raising=False)
    hook = hook_from_config(config)
    assert isinstance(hook, HookChain) and [type(h).__name__ for h in hook.hooks] == ["StealingMonitor", "ResponseMarker"]
    assert hook_from_config(ServeConfig(model="m")) is None


def test_calibrate_command_keeps_a_seeded_profile_in_the_store(tmp_path: Path) -> None:
    runner, app = CliRunner(), _app()
    common = ["responses", "calibrate", "--data", "digits", "--components", "10", "--unusual-share", "0.05",
              "--responses-db", str(tmp_path / "r.sqlite"), "--json"]
    made = runner.invoke(app, common)
    assert made.exit_code == 0, made.output
    doc = json.loads(made.stdout)
    profile = ResponseStore(tmp_path / "r.sqlite").profile()
    assert profile is not None and doc["sha256"] == profile.sha256 and doc["seed"] == 0 and doc["boost"] == DEFAULT_BOOST
    assert doc["unusual_rate"] == pytest.approx(DEFAULT_BOOST * doc["typical_rate"]) and doc["typical_rate"] < doc["rate"] == DEFAULT_RATE
    again = runner.invoke(app, common)
    assert json.loads(again.stdout)["sha256"] == doc["sha256"]  # same data, same seed: the same profile


def test_calibrate_takes_a_memmap_folder_and_the_marking_kind(tmp_path: Path) -> None:
    from tracemark.data import load_dataset
    from tracemark.data.ondisk import write_memmap

    digits = load_dataset("digits")
    write_memmap(tmp_path / "folder", digits.x_train, digits.y_train)
    runner, app = CliRunner(), _app()
    docs = {}
    for data, kind in (("digits", "--region-marks"), (str(tmp_path / "folder"), "--region-marks"),
                       (str(tmp_path / "folder"), "--per-input-marks")):
        made = runner.invoke(app, ["responses", "calibrate", "--data", data, "--components", "10", kind,
                                   "--responses-db", str(tmp_path / f"{len(docs)}.sqlite"), "--json"])
        assert made.exit_code == 0, made.output
        docs[(data, kind)] = json.loads(made.stdout)
    region, folder_region, folder_per_input = docs.values()
    # the folder holds the same images, fewer than the sample limit: every one is used, so the profile is the same
    assert folder_region["sha256"] == region["sha256"] and folder_region["region_marks"] is True
    assert folder_per_input["region_marks"] is False and folder_per_input["sha256"] != region["sha256"]
