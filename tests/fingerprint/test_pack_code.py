"""``tracemark pack --customer X --registry R``: the base packed with X's weight code (no training), recorded in R."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

import tracemark as tm
from tests.fingerprint.conftest import CUSTOMERS
from tracemark.attacks.symmetry import permute_units, rescale_units
from tracemark.cli import package as package_cli
from tracemark.fingerprint import FingerprintScheme, Registry, weight_trace
from tracemark.ledger import file_sha256

runner = CliRunner()
MANY = [f"customer-{i:04d}" for i in range(300)] + CUSTOMERS


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    root = typer.Typer(pretty_exceptions_enable=False)
    package_cli.register(root)
    return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, models):
    from tracemark.package import VendorKey

    d = tmp_path_factory.mktemp("packcode")
    tm.save_model(models.base, d / "base.safetensors")
    tm.save_model(models.independent, d / "other-base.safetensors")
    models.key.save(d / "master.key")
    VendorKey.generate().save(d / "vendor.key")
    Registry.create(d / "registry.sqlite", FingerprintScheme.from_key(models.key))
    return d


def _pack(app, workdir, customer: str, model: str = "base.safetensors", *extra: str):
    return runner.invoke(app, ["pack", str(workdir / model), "--out", str(workdir / f"{customer}.tmpkg"),
                               "--vendor-key", str(workdir / "vendor.key"), "--customer", customer, *extra, "--json"],
                         env={"PKG_PASS": "a long package passphrase"})


def test_pack_applies_and_records_the_customers_weight_code(app, workdir, models):
    from tracemark.package import Passphrase, VendorKey, load_package

    code = ["--registry", str(workdir / "registry.sqlite"), "--master-key", str(workdir / "master.key"),
            "--passphrase-env", "PKG_PASS"]
    r = _pack(app, workdir, "acme", "base.safetensors", *code)
    assert r.exit_code == 0, r.output
    packed = json.loads(r.output)
    record = {x.id: x for x in Registry.open(workdir / "registry.sqlite").records()}["acme"]
    assert record.model_sha256 == packed["model_sha256"] != file_sha256(workdir / "base.safetensors")
    assert record.package_path == str(workdir / "acme.tmpkg") and record.package_sha256 == file_sha256(workdir / "acme.tmpkg")
    assert record.report["made_by"] == "pack" and record.report["black_box_code"] is False
    assert Registry.open(workdir / "registry.sqlite").base_sha256 == file_sha256(workdir / "base.safetensors")

    loaded = load_package(workdir / "acme.tmpkg", Passphrase("a long package passphrase"),
                          vendor_key=VendorKey.load(workdir / "vendor.key").public)
    scheme = FingerprintScheme.from_key(models.key)
    copy = loaded.model
    assert tm.accuracy(copy, models.data.x_test, models.data.y_test) >= tm.accuracy(models.base, models.data.x_test,
                                                                                     models.data.y_test) - 0.02
    for suspect in (copy, rescale_units(permute_units(copy, 1), 2)):
        result = weight_trace(scheme, MANY, suspect, models.base, alpha=1e-9)
        assert result.accused == ["acme"] and result.best.log10_p_adjusted < -1000
    # packing again for the same customer (another device) gives the same weights
    assert _pack(app, workdir, "acme", "base.safetensors", *code).exit_code == 0
    assert json.loads(_pack(app, workdir, "acme", "base.safetensors", *code).output)["model_sha256"] == packed["model_sha256"]


def test_pack_with_a_registry_refuses_another_base_or_no_master_key(app, workdir):
    registry = ["--registry", str(workdir / "registry.sqlite"), "--passphrase-env", "PKG_PASS"]
    r = _pack(app, workdir, "globex", "base.safetensors", *registry)
    assert r.exit_code != 0 and "--master-key" in r.output
    _pack(app, workdir, "initech", "base.safetensors", *registry, "--master-key", str(workdir / "master.key"))
    r = _pack(app, workdir, "globex", "other-base.safetensors", *registry, "--master-key", str(workdir / "master.key"))
    assert r.exit_code != 0 and isinstance(r.exception, Exception) and "not the one" in str(r.exception)
    assert not (workdir / "globex.tmpkg").exists()
