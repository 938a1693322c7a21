"""`--arch package.module:factory`: the CLI marks, verifies and exports a model built by the user's own code."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import tracemark as tm
from tests.cli_runs import cli_error, run
from tests.user_models import small_residual

ARCH = "tests.user_models:small_residual"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, digits):
    """The user's way: build from their own code, train with their own loop, save a plain state dict."""
    d = tmp_path_factory.mktemp("arch")
    model = small_residual()
    tm.fit(model, tm.to_tensor_dataset(digits.x_train, digits.y_train), epochs=8, seed=0)
    save_file(model.state_dict(), str(d / "w.safetensors"))
    key = tm.WatermarkKey.generate("content", images=digits.x_train, labels=digits.y_train, n_triggers=100,
                                   seed=bytes(range(32)))
    key.save(d / "k.key")
    return d


def test_embed_verify_export_a_factory_model(workdir):
    k, w, m = (str(workdir / name) for name in ("k.key", "w.safetensors", "m.safetensors"))
    r = run("embed", "--arch", ARCH, "--model", w, "--key", k, "--data", "digits", "--out", m, "--lr", "2e-3",
            "--max-clean-drop", "2", "--json")
    assert json.loads(r.output)["reached_goal"]
    r = run("verify", "--arch", ARCH, "--model", m, "--key", k, "--json")
    assert json.loads(r.output)["verdict"] == "copy"
    r = run("verify", "--arch", ARCH, "--model", w, "--key", k, "--json")
    assert json.loads(r.output)["verdict"] == "no-evidence"
    run("export", m, "--arch", ARCH, "--out", str(workdir / "m.onnx"))
    r = run("verify", "--model", str(workdir / "m.onnx"), "--key", k, "--json")
    assert json.loads(r.output)["verdict"] == "copy"


def test_train_a_factory_model_records_no_code(workdir, capsys, monkeypatch):
    out = workdir / "t.safetensors"
    run("train", "--arch", ARCH, "--data", "digits", "--epochs", "1", "--out", str(out))
    header = json.loads(out.read_bytes()[8 : 8 + int.from_bytes(out.read_bytes()[:8], "little")])
    entry = json.loads(header["__metadata__"]["tracemark"])
    assert entry == {"format": "tracemark-weights/1", "input_shape": [1, 8, 8], "num_classes": 10}
    assert "user_models" not in out.read_bytes().decode("latin-1")
    line = cli_error(capsys, monkeypatch, "verify", "--model", str(out), "--key", str(workdir / "k.key"))
    assert "built by your own code" in line and "--arch package.module:factory" in line


@pytest.mark.parametrize(("arch", "extra", "needles"), [
    ("tests.user_models", [], ["FactoryStringError", "no colon"]),
    ("tests.no_such_module:f", [], ["FactoryImportError", "'tests.no_such_module'", "No module named"]),
    ("tests.user_models:nope", [], ["FactoryNotFoundError", "no attribute 'nope'"]),
    ("tests.user_models:not_a_module", [], ["FactoryResultError", "returned a dict"]),
    ("tests.user_models:wide_residual", [], ["WeightsMismatchError", "missing keys", "unexpected keys"]),
    (ARCH, ["--classes", "5"], ["WeightsMismatchError", "shape mismatch", "(10, 128) in the file, (5, 128) in the model"]),
])
def test_bad_arch_gives_one_line(workdir, capsys, monkeypatch, arch, extra, needles):
    line = cli_error(capsys, monkeypatch, "verify", "--arch", arch, *extra, "--model", str(workdir / "w.safetensors"),
                     "--key", str(workdir / "k.key"))
    for needle in needles:
        assert needle in line, line


def test_a_file_never_names_code_to_import(workdir, capsys, monkeypatch):
    """An import string in a suspect file's metadata is only ever looked up among the built-in names."""
    evil = workdir / "evil.safetensors"
    spec = {"arch": "tests.user_models:small_residual", "input_shape": [1, 8, 8], "num_classes": 10}
    save_file({"w": torch.zeros(1)}, str(evil),
              metadata={"tracemark": json.dumps({"format": "tracemark-model/1", "spec": spec})})
    line = cli_error(capsys, monkeypatch, "verify", "--model", str(evil), "--key", str(workdir / "k.key"))
    assert "unknown architecture" in line
    line = cli_error(capsys, monkeypatch, "verify", "--model", str(workdir / "w.safetensors"), "--key", str(workdir / "k.key"))
    assert "ModelFileError" in line and "--arch" in line


@pytest.mark.parametrize("command", [["trace", "--registry", "none.sqlite"], ["responses", "check", "--responses-db", "none.sqlite"]])
def test_trace_and_responses_check_build_the_suspect_with_arch(workdir, capsys, monkeypatch, command):
    """`trace` and `responses check` take --arch like verify: a wrong factory is reported before any store is read."""
    key = ["--key", str(workdir / "k.key")] if command[0] == "trace" else []
    line = cli_error(capsys, monkeypatch, *command, *key, "--arch", "tests.user_models:wide_residual",
                     "--model", str(workdir / "w.safetensors"))
    assert "WeightsMismatchError" in line and "missing keys" in line, line


def test_verify_reference_built_by_its_factory(workdir):
    """``--reference-arch`` builds each ``--reference`` from its factory and plain weights: a marked model given as the
    reference pushes the empirical null to its own match rate, so the marked suspect is no longer called a copy."""
    k, w, m = (str(workdir / name) for name in ("k.key", "w.safetensors", "m.safetensors"))
    if not (workdir / "m.safetensors").exists():
        run("embed", "--arch", ARCH, "--model", w, "--key", k, "--data", "digits", "--out", m, "--lr", "2e-3",
            "--max-clean-drop", "2", "--json")
    r = run("verify", "--arch", ARCH, "--model", m, "--key", k, "--reference", m, "--reference-arch", ARCH, "--json")
    doc = json.loads(r.output)
    assert doc["null"]["source"] == "empirical" and doc["null"]["details"]["models"] == [m]
    assert doc["null"]["details"]["matches_per_model"][0] >= 90 and doc["verdict"] != "copy"
