"""Mixed precision for fit and embed: bf16 on the CPU trains and marks; fp16 there is refused in one line."""

from __future__ import annotations

import copy

import pytest
import torch

import tracemark as tm
from tracemark.errors import InvalidOptionError
from tracemark.training import mixed_precision


@pytest.fixture(scope="module")
def bf16_mlp(digits):
    model = tm.build_model("mlp", digits.input_shape, 10, seed=0)
    tm.fit(model, tm.to_tensor_dataset(digits.x_train, digits.y_train), epochs=3, seed=0, device="cpu", precision="bf16")
    return model


def test_bf16_fit_on_cpu_learns(digits, bf16_mlp):
    assert all(p.dtype == torch.float32 for p in bf16_mlp.parameters())  # autocast leaves the weights float32
    assert tm.accuracy(bf16_mlp, digits.x_test, digits.y_test) > 0.8  # chance is 0.1


def test_bf16_differs_from_default_which_stays_float32(digits):
    data = tm.to_tensor_dataset(digits.x_train[:256], digits.y_train[:256])
    runs = {}
    for precision in (None, None, "bf16"):
        model = tm.build_model("mlp", digits.input_shape, 10, seed=0)
        tm.fit(model, data, epochs=1, seed=0, device="cpu", precision=precision)
        runs.setdefault(precision, []).append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(*runs[None])  # the default path is deterministic
    assert not torch.equal(runs[None][0], runs["bf16"][0])  # and bf16 really ran in lower precision


def test_bf16_embed_on_cpu_reaches_its_goal(digits, bf16_mlp):
    key = tm.WatermarkKey.generate("content", images=digits.x_train, labels=digits.y_train, n_triggers=30, seed=bytes(32))
    marked = copy.deepcopy(bf16_mlp)
    report = tm.embed(marked, key, digits, seed=0, lr=2e-3, max_clean_drop=0.02, device="cpu", precision="bf16")
    assert report.reached_goal and report.trigger_accuracy_after == 1.0
    assert tm.verify(key, tm.TorchTarget(marked)).verdict == "copy"
    assert tm.verify(key, tm.TorchTarget(bf16_mlp)).verdict == "no-evidence"


@pytest.mark.parametrize(("precision", "needle"), [("fp16", "needs a CUDA device"), ("fp8", "is not one of")])
def test_unusable_precision_is_one_line(digits, precision, needle):
    model = tm.build_model("mlp", digits.input_shape, 10, seed=0)
    with pytest.raises(InvalidOptionError, match=needle) as exc:
        tm.fit(model, tm.to_tensor_dataset(digits.x_train[:8], digits.y_train[:8]), device="cpu", precision=precision)
    assert "\n" not in str(exc.value)
    with pytest.raises(InvalidOptionError, match=needle):
        mixed_precision(torch.device("cpu"), precision)  # type: ignore[arg-type]


def test_cli_train_precision_bf16_differs_and_fp16_is_one_line(tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file

    from tests.cli_runs import cli_error, run

    paths = {}
    for precision in (None, "bf16"):
        out = tmp_path / f"{precision}.safetensors"
        run("train", "--out", str(out), "--arch", "mlp", "--epochs", "1", "--device", "cpu",
            *(["--precision", precision] if precision else []))
        paths[precision] = load_file(str(out))
    assert any(not torch.equal(paths[None][k], paths["bf16"][k]) for k in paths[None])
    line = cli_error(capsys, monkeypatch, "train", "--out", str(tmp_path / "x.safetensors"), "--arch", "mlp",
                     "--epochs", "1", "--device", "cpu", "--precision", "fp16")
    assert "needs a CUDA device" in line
    assert not (tmp_path / "x.safetensors").exists()
