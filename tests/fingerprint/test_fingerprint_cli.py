"""``tracemark fingerprint`` and ``tracemark trace`` end to end, with a ledger."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

import tracemark as tm
from tracemark.cli import fingerprint as fingerprint_cli
from tracemark.fingerprint import CodeGoalWarning, Registry
from tracemark.ledger import Ledger, OwnerIdentity, file_sha256

runner = CliRunner()


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    root = typer.Typer(pretty_exceptions_enable=False)
    fingerprint_cli.register(root)
    return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, models):
    d = tmp_path_factory.mktemp("fpcli")
    tm.save_model(models.base, d / "base.safetensors")
    tm.save_model(models.independent, d / "independent.safetensors")
    models.key.save(d / "master.key")
    owner = OwnerIdentity.generate()
    owner.save(d / "owner.key", "owner pass")
    Ledger.init(d / "ledger", owner)
    (d / "customers.txt").write_text("acme\nglobex\n")
    from tracemark.package import VendorKey

    VendorKey.generate().save(d / "vendor.key")
    return d


def test_fingerprint_then_trace(app, workdir):
    env = {"TRACEMARK_LEDGER": str(workdir / "ledger"), "TRACEMARK_OWNER_KEY": str(workdir / "owner.key"),
           "TRACEMARK_OWNER_PASSPHRASE": "owner pass"}
    out = workdir / "copies"
    r = runner.invoke(app, ["fingerprint", "--key", str(workdir / "master.key"), "--model", str(workdir / "base.safetensors"),
                            "--customers", str(workdir / "customers.txt"), "--out", str(out), "--workers", "2",
                            "--lr", "3e-3", "--code-accuracy", "0.45",
                            "--max-clean-drop", "0.02", "--vendor-key", str(workdir / "vendor.key"), "--json"], env=env)
    assert r.exit_code == 0, r.output
    made = json.loads(r.output)
    assert [c["customer"] for c in made["copies"]] == ["acme", "globex"]
    assert all(c["reached_goal"] for c in made["copies"])
    assert (out / "acme.safetensors").is_file()

    events = [e.event for e in Ledger.open(workdir / "ledger").entries()]
    assert events.count("customer-code-created") == 2 and events.count("model-embedded") == 2
    assert events.count("model-packaged") == 2
    from tracemark.package import VendorKey, inspect_package

    acme = Registry.open(out / "registry.sqlite").records()[0]
    assert acme.package_path == str(out / "acme.tmpkg") and len(acme.package_sha256) == 64
    pinned = VendorKey.load(workdir / "vendor.key").public
    assert inspect_package(out / "acme.tmpkg", pinned).licence.customer_id == "acme"

    common = ["trace", "--key", str(workdir / "master.key"), "--registry", str(out / "registry.sqlite"), "--json"]
    for suspect, expected in (("copies/globex.safetensors", "globex"), ("copies/acme.safetensors", "acme"),
                              ("independent.safetensors", None)):
        r = runner.invoke(app, [*common, "--model", str(workdir / suspect)], env=env)
        assert r.exit_code == 0, r.output
        result = json.loads(r.output)
        assert result["customer"] == expected
        assert result["verdict"] == ("customer" if expected else "no-match")
    assert [e.event for e in Ledger.open(workdir / "ledger").entries()].count("trace") == 3

    # with the base model the weight test runs too; the base is checked against the registry's hash
    assert Registry.open(out / "registry.sqlite").base_sha256 == file_sha256(workdir / "base.safetensors")
    r = runner.invoke(app, [*common, "--model", str(out / "globex.safetensors"), "--base", str(workdir / "base.safetensors")],
                      env=env)
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert result["customer"] == "globex" and result["weights"]["accused"] == ["globex"]
    assert result["weights"]["best"]["log10_p_adjusted"] < -100
    entry = list(Ledger.open(workdir / "ledger").entries())[-1]
    assert entry.payload["weight_test"]["accused"] == ["globex"]
    r = runner.invoke(app, [*common, "--model", str(out / "globex.safetensors"), "--base", str(workdir / "independent.safetensors")])
    assert r.exit_code != 0 and "not the one" in str(r.exception)
    r = runner.invoke(app, [*common, "--url", "http://127.0.0.1:9/predict", "--base", str(workdir / "base.safetensors")])
    assert r.exit_code == 2 and "weight test needs" in r.output

    # customers who already have a copy are refused; a new one joins the same registry
    again = ["fingerprint", "--key", str(workdir / "master.key"), "--model", str(workdir / "base.safetensors"),
             "--out", str(out), "--lr", "3e-3", "--code-accuracy", "0.45", "--max-clean-drop", "0.02", "--workers", "1"]
    r = runner.invoke(app, [*again, "--customers", str(workdir / "customers.txt")], env=env)
    assert r.exit_code != 0 and "already registered with a copy" in str(r.exception)
    (workdir / "more.txt").write_text("initech\n")
    r = runner.invoke(app, [*again, "--customers", str(workdir / "more.txt"), "--json"], env=env)
    assert r.exit_code == 0, r.output
    assert Registry.open(out / "registry.sqlite").customers() == ["acme", "globex", "initech"]
    r = runner.invoke(app, [*common, "--model", str(out / "initech.safetensors")], env=env)
    assert json.loads(r.output)["customer"] == "initech"


def test_trace_needs_one_suspect(app, workdir):
    r = runner.invoke(app, ["trace", "--key", str(workdir / "master.key"), "--registry", str(workdir / "r.sqlite")])
    assert r.exit_code != 0 and "exactly one of --model or --url" in r.output


def test_fingerprint_exits_1_when_a_copy_misses_its_code_goal(app, workdir):
    out = workdir / "short"
    (workdir / "one.txt").write_text("hooli\n")
    with pytest.warns(CodeGoalWarning, match="hooli"):
        r = runner.invoke(app, ["fingerprint", "--key", str(workdir / "master.key"), "--model", str(workdir / "base.safetensors"),
                                "--customers", str(workdir / "one.txt"), "--out", str(out), "--workers", "1",
                                "--max-steps", "100", "--json"])
    assert r.exit_code == 1, r.output
    copy = json.loads(r.stdout)["copies"][0]
    assert not copy["reached_goal"] and "kept the best one" in copy["note"]
    assert (out / "hooli.safetensors").is_file() and Registry.open(out / "registry.sqlite").records()[0].model_sha256


def test_trace_also_checks_an_apis_marked_answers(app, workdir, models, tmp_path):
    """`trace --responses-db`: one suspect, two questions — whose copy, and which API client's answers it learned."""
    import numpy as np
    import torch

    from tracemark.data import load_model
    from tracemark.extraction.store import MarkedResponse, ResponseStore
    from tracemark.fingerprint import FingerprintScheme
    from tracemark.serve import ClientStore

    out = workdir / "copies"
    if not (out / "acme.safetensors").is_file():
        pytest.skip("needs the copies of test_fingerprint_then_trace")
    # an API client was served acme's labels where they differ from the base's: a clone of acme reproduces them
    x = FingerprintScheme.from_key(models.key).queries.inputs.astype(np.float32)
    with torch.no_grad():
        base_labels = models.base(torch.from_numpy(x)).argmax(1).numpy()
        acme_labels = load_model(out / "acme.safetensors")(torch.from_numpy(x)).argmax(1).numpy()
    differ = np.flatnonzero(base_labels != acme_labels)
    assert len(differ) >= 20
    client = ClientStore(tmp_path / "clients.sqlite").add("api-acme").client
    ResponseStore(tmp_path / "r.sqlite").record(client, [
        MarkedResponse(str(i), x[i], int(base_labels[i]), int(acme_labels[i]), np.eye(10)[acme_labels[i]]) for i in differ])

    common = ["trace", "--key", str(workdir / "master.key"), "--registry", str(out / "registry.sqlite"), "--json",
              "--responses-db", str(tmp_path / "r.sqlite")]
    r = runner.invoke(app, [*common, "--model", str(out / "acme.safetensors")])
    assert r.exit_code == 0, r.output
    both = json.loads(r.output)
    assert both["trace"]["customer"] == "acme"
    assert both["clone_check"]["outcome"] == "clone-of-client" and both["clone_check"]["clients"][0]["client_name"] == "api-acme"
    r = runner.invoke(app, [*common, "--model", str(workdir / "independent.safetensors")])
    both = json.loads(r.output)
    assert both["trace"]["customer"] is None and both["clone_check"]["outcome"] == "no-client-matches"
    r = runner.invoke(app, [*common[:-1], str(tmp_path / "missing.sqlite"), "--model", str(out / "acme.safetensors")])
    assert r.exit_code != 0 and "no response store" in str(r.exception)
    ResponseStore(tmp_path / "empty.sqlite")
    r = runner.invoke(app, [*common[:-1], str(tmp_path / "empty.sqlite"), "--model", str(out / "acme.safetensors")])
    assert r.exit_code != 0 and "holds no marked answers" in str(r.exception)


def test_trace_base_aligns_a_disguised_copy_unless_told_not_to(app, workdir):
    """A copy whose hidden units the thief permuted and rescaled (same function) is named by ``trace --base``;
    ``--no-align`` compares the weights as they are and the code is gone."""
    from tracemark.attacks.symmetry import permute_units, rescale_units

    out = workdir / "copies"
    if not (out / "globex.safetensors").exists():
        pytest.skip("needs the copies made by test_fingerprint_then_trace")
    disguised = rescale_units(permute_units(tm.load_model(out / "globex.safetensors"), seed=1), seed=2)
    tm.save_model(disguised, workdir / "disguised.safetensors")
    common = ["trace", "--key", str(workdir / "master.key"), "--registry", str(out / "registry.sqlite"), "--json",
              "--model", str(workdir / "disguised.safetensors"), "--base", str(workdir / "base.safetensors")]
    aligned = json.loads(runner.invoke(app, common).output)
    assert aligned["weights"]["accused"] == ["globex"] and aligned["weights"]["best"]["log10_p_adjusted"] < -20
    plain = json.loads(runner.invoke(app, [*common, "--no-align"]).output)
    assert plain["weights"]["accused"] == [] and plain["weights"]["alignment"] is None
