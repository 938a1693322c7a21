"""The CLI end to end: key, train, embed, export, verify, and the errors a new user meets."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import tracemark as tm
from tracemark.cli import build_app
from tracemark.errors import UnsafeFileError, WrongPassphraseError

runner = CliRunner()
app = build_app()


def run(*args: str, env: dict | None = None):
    result = runner.invoke(app, list(args), env=env)
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, models):
    d = tmp_path_factory.mktemp("cli")
    tm.save_model(models.base, d / "base.safetensors")
    tm.save_model(models.independent, d / "independent.safetensors")
    return d


def test_key_new_show_embed_verify(workdir):
    r = run("key", "new", "--kind", "content", "--out", str(workdir / "k.key"), "--triggers-png", str(workdir / "t.png"), "--json")
    assert r.exit_code == 0, r.output
    described = json.loads(r.output)
    assert (workdir / "t.png").read_bytes()[:4] == b"\x89PNG"
    r = run("key", "show", str(workdir / "k.key"), "--json")
    assert json.loads(r.output)["commitment"] == described["commitment"]

    r = run("embed", "--model", str(workdir / "base.safetensors"), "--key", str(workdir / "k.key"),
            "--out", str(workdir / "marked.safetensors"), "--max-clean-drop", "1.0", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["trigger_accuracy_after"] >= 0.99

    r = run("export", str(workdir / "marked.safetensors"), "--out", str(workdir / "marked.onnx"))
    assert r.exit_code == 0, r.output
    for suspect, expected in (("marked.onnx", "copy"), ("independent.safetensors", "no-evidence")):
        r = run("verify", "--key", str(workdir / "k.key"), "--model", str(workdir / suspect), "--json")
        assert r.exit_code == 0, r.output
        verdict = json.loads(r.output)
        assert verdict["verdict"] == expected and verdict["key_commitment"] == described["commitment"]


def test_key_new_refuses_to_overwrite(workdir):
    (workdir / "exists.key").write_text("precious")
    r = run("key", "new", "--out", str(workdir / "exists.key"))
    assert r.exit_code != 0 and "refusing to overwrite" in r.output
    assert (workdir / "exists.key").read_text() == "precious"


def test_encrypted_key_with_env_passphrase(workdir):
    env = {"TRACEMARK_KEY_PASSPHRASE": "s3cret"}
    r = run("key", "new", "--kind", "abstract", "--encrypt", "--out", str(workdir / "enc.key"), env=env)
    assert r.exit_code == 0, r.output
    assert "seed" not in (workdir / "enc.key").read_text()
    assert run("key", "show", str(workdir / "enc.key"), env=env).exit_code == 0
    r = run("key", "show", str(workdir / "enc.key"), env={"TRACEMARK_KEY_PASSPHRASE": "wrong"})
    assert isinstance(r.exception, WrongPassphraseError)


def test_verify_needs_exactly_one_suspect(workdir):
    r = run("verify", "--key", str(workdir / "k.key"))
    assert r.exit_code != 0 and "exactly one" in r.output


def test_pickled_suspect_is_refused(workdir, models):
    import torch

    torch.save(models.base, workdir / "pickled.pt")
    run("key", "new", "--kind", "abstract", "--out", str(workdir / "k2.key"))
    r = run("verify", "--key", str(workdir / "k2.key"), "--model", str(workdir / "pickled.pt"))
    assert isinstance(r.exception, UnsafeFileError)


def test_named_errors_on_the_real_command_line(workdir, models):
    """The installed entry point prints one clear line and exits 2 (no traceback)."""
    (workdir / "broken.key").write_text('{"format": "tracemark-key", "version": 1, "key": {"kind": "cont')
    out = subprocess.run([sys.executable, "-m", "tracemark", "key", "show", str(workdir / "broken.key")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "KeyFileError" in out.stderr and "corrupt or truncated" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "tracemark", "verify", "--key", str(workdir / "k2.key"), "--url",
                          "http://127.0.0.1:9/predict", "--timeout", "2"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "TargetNotFoundError" in out.stderr


def test_commands_append_to_a_configured_ledger(workdir, tmp_path):
    env = {"TRACEMARK_OWNER_PASSPHRASE": "owner pass", "TRACEMARK_OWNER_KEY": str(tmp_path / "owner.pem")}
    ledger_dir = tmp_path / "ledger"
    assert run("ledger", "init", str(ledger_dir), env=env).exit_code == 0
    env["TRACEMARK_LEDGER"] = str(ledger_dir)
    key = str(tmp_path / "l.key")
    assert run("key", "new", "--kind", "abstract", "--out", key, env=env).exit_code == 0
    r = run("embed", "--model", str(workdir / "base.safetensors"), "--key", key, "--out", str(tmp_path / "m.safetensors"),
            "--max-clean-drop", "2", env=env)
    assert r.exit_code == 0, r.output
    assert run("verify", "--key", key, "--model", str(tmp_path / "m.safetensors"), env=env).exit_code == 0
    shown = json.loads(run("ledger", "show", "--json", env=env).output)
    assert [e["event"] for e in shown] == ["ledger-created", "key-created", "model-embedded", "verification"]
    commitment = tm.WatermarkKey.load(key).commitment()
    assert all(e["payload"]["key_commitment"] == commitment for e in shown[1:])
    assert shown[3]["payload"]["verdict"] == "copy"
    assert run("ledger", "verify", env=env).exit_code == 0
