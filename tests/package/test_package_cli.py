"""The CLI end to end: vendor keygen, pack, inspect, unpack, device id/enrol, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tracemark.cli.package import register
from tracemark.data.models import save_model
from tracemark.package import inspect_package

PASS = "a passphrase for the cli test"


@pytest.fixture()
def cli() -> typer.Typer:
    root = typer.Typer()
    register(root)
    return root


def _run(cli: typer.Typer, *args: str, env: dict | None = None):
    result = CliRunner().invoke(cli, list(args), env=env)
    return result


def test_keygen_pack_inspect_unpack(cli: typer.Typer, tmp_path: Path, model) -> None:
    r = _run(cli, "vendor", "keygen", "--out", str(tmp_path / "vendor"), "--json")
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["files"]) == 2
    assert _run(cli, "vendor", "keygen", "--out", str(tmp_path / "vendor")).exit_code != 0  # no silent overwrite
    src = save_model(model, tmp_path / "lenet.safetensors")
    pkg = tmp_path / "lenet.tmpkg"
    r = _run(
        cli, "pack", str(src), "--out", str(pkg), "--vendor-key", str(tmp_path / "vendor.key"), "--customer", "acme",
        "--days", "10", "--output", "top_k", "--top-k", "2", "--passphrase-env", "TM_PASS", "--chunk-mib", "1", "--json",
        env={"TM_PASS": PASS},
    )
    assert r.exit_code == 0, r.output
    packed = json.loads(r.stdout)
    assert packed["model_id"] == "lenet" and packed["licence"]["output_policy"] == {"mode": "top_k", "top_k": 2, "decimals": None}

    r = _run(cli, "inspect", str(pkg), "--vendor-pub", str(tmp_path / "vendor.pub"))
    assert r.exit_code == 0 and "licence for acme" in r.stdout and "pinned key" in r.stdout

    plain = tmp_path / "out.safetensors"
    pin = ("--vendor-pub", str(tmp_path / "vendor.pub"))
    r = _run(cli, "unpack", str(pkg), "--out", str(plain), "--key", str(tmp_path / "vendor.key"), *pin)
    assert r.exit_code == 0, r.output
    assert plain.read_bytes() == src.read_bytes()
    plain.unlink()
    r = _run(cli, "unpack", str(pkg), "--out", str(plain), "--passphrase-env", "TM_PASS", *pin, env={"TM_PASS": "wrong"})
    assert r.exit_code != 0 and type(r.exception).__name__ == "WrongPackagePassphraseError"
    assert not plain.exists()


def test_device_enrol_and_machine_bound_pack(cli: typer.Typer, tmp_path: Path, model) -> None:
    r = _run(cli, "device", "id", "--json")
    assert r.exit_code == 0
    ident = json.loads(r.stdout)["device_id"]
    assert ident.startswith("dev-")
    assert _run(cli, "device", "enrol", "--out", str(tmp_path / "dev.json")).exit_code == 0
    assert _run(cli, "vendor", "keygen", "--out", str(tmp_path / "v")).exit_code == 0
    src = save_model(model, tmp_path / "m.safetensors")
    pkg = tmp_path / "m.tmpkg"
    r = _run(cli, "pack", str(src), "--out", str(pkg), "--vendor-key", str(tmp_path / "v.key"), "--customer", "c1",
             "--device", ident, "--machine-device", str(tmp_path / "dev.json"), "--no-for-vendor")
    assert r.exit_code == 0, r.output
    assert [w["type"] for w in inspect_package(pkg, tmp_path / "v.pub").manifest.wraps] == ["machine"]
    r = _run(cli, "unpack", str(pkg), "--out", str(tmp_path / "p.safetensors"), "--machine", env={"TRACEMARK_VENDOR_PUB": str(tmp_path / "v.pub")})
    assert r.exit_code == 0, r.output


def test_pack_without_any_wrap_is_refused(cli: typer.Typer, tmp_path: Path, model) -> None:
    assert _run(cli, "vendor", "keygen", "--out", str(tmp_path / "v")).exit_code == 0
    src = save_model(model, tmp_path / "m.safetensors")
    r = _run(cli, "pack", str(src), "--out", str(tmp_path / "m.tmpkg"), "--vendor-key", str(tmp_path / "v.key"),
             "--customer", "c", "--no-for-vendor")
    assert r.exit_code != 0 and "at least one key wrap" in str(r.exception)
    assert not (tmp_path / "m.tmpkg").exists()
