"""The ``ledger`` and ``evidence`` CLI verbs, end to end through typer."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from tests.ledger._tsa import Authority, LocalTSA
from tracemark.cli import evidence as evidence_cli
from tracemark.cli import ledger as ledger_cli
from tracemark.keys import WatermarkKey
from tracemark.ledger import Ledger, configured_ledger, record_key_created

from .conftest import PASSPHRASE


def _flat(text: str) -> str:
    return " ".join(text.split())


def _app() -> typer.Typer:
    root = typer.Typer()
    ledger_cli.register(root)
    evidence_cli.register(root)
    return root


def test_cli_init_timestamp_export_verify(tmp_path: Path, tsa: LocalTSA, authority: Authority, wm_key: WatermarkKey, monkeypatch) -> None:  # noqa: ANN001
    runner = CliRunner()
    app = _app()
    ledger_dir, owner_key = tmp_path / "ledger", tmp_path / "owner.pem"
    env = {"TRACEMARK_OWNER_PASSPHRASE": PASSPHRASE, "TRACEMARK_OWNER_KEY": str(owner_key)}
    result = runner.invoke(app, ["ledger", "init", str(ledger_dir)], env=env)
    assert result.exit_code == 0, result.output
    assert owner_key.is_file() and "ledger-created" in result.output

    # another command appends through the configured ledger
    monkeypatch.setenv("TRACEMARK_LEDGER", str(ledger_dir))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ledger = configured_ledger()
    assert ledger is not None
    record_key_created(ledger, wm_key)
    key_file = wm_key.save(tmp_path / "wm.key", "kp")

    result = runner.invoke(app, ["ledger", "timestamp", "--tsa-url", tsa.url, "--tsa-chain", str(authority.chain_pem), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["token"]["authority"] == "CN=Test TSA"

    result = runner.invoke(app, ["ledger", "verify", "--tsa-ca", str(authority.ca_pem), "--owner-pub", f"{owner_key}.pub.pem"])
    assert result.exit_code == 0, result.output
    assert "3 entries" in _flat(result.output)

    result = runner.invoke(app, ["ledger", "show", "--json"])
    assert [e["event"] for e in json.loads(result.output)] == ["ledger-created", "key-created", "timestamped"]

    bundle = tmp_path / "evidence.zip"
    result = runner.invoke(app, ["evidence", "export", "-o", str(bundle), "--key", str(key_file)], env={"TRACEMARK_KEY_PASSPHRASE": "kp"})
    assert result.exit_code == 0, result.output

    result = runner.invoke(app, ["evidence", "verify", str(bundle), "--tsa-ca", str(authority.ca_pem)])
    assert result.exit_code == 0, result.output
    assert "all checks passed" in _flat(result.output) and "re-derived and match" in _flat(result.output)

    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0x01
    bundle.write_bytes(bytes(data))
    result = runner.invoke(app, ["evidence", "verify", str(bundle), "--json"])
    assert result.exit_code == 1
    failure = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert failure["ok"] is False and failure["error"] == "BundleError"


def test_configured_ledger_absent_or_misconfigured(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from tracemark.errors import LedgerError

    monkeypatch.delenv("TRACEMARK_LEDGER", raising=False)
    assert configured_ledger() is None
    monkeypatch.delenv("TRACEMARK_OWNER_KEY", raising=False)
    try:
        configured_ledger(tmp_path)
    except LedgerError as exc:
        assert "TRACEMARK_OWNER_KEY" in str(exc)
    else:
        raise AssertionError("expected LedgerError")
    assert not Ledger(tmp_path).path.exists()
