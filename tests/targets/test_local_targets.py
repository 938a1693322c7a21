"""Local targets and model files: same answers in every format, and no unpickling of suspects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tracemark as tm
from tracemark.errors import ModelFileError, UnsafeFileError


@pytest.fixture(scope="module")
def files(tmp_path_factory, models):
    d = tmp_path_factory.mktemp("targets")
    shape = models.data.input_shape
    tm.save_model(models.marked, d / "m.safetensors")
    tm.save_onnx(models.marked, d / "m.onnx", shape)
    tm.save_exported(models.marked, d / "m.pt2", shape)
    torch.save(models.marked.state_dict(), d / "state.pt")
    torch.save(models.marked, d / "pickled.pt")  # a whole pickled module: must be refused
    return d


@pytest.mark.parametrize("name", ["m.safetensors", "m.onnx", "m.pt2"])
def test_every_format_answers_like_the_module(files, models, name):
    x = models.data.x_test[:50]
    expected = tm.predict_labels(models.marked, x)
    target = tm.load_target(files / name)
    assert np.array_equal(target.predict_labels(x), expected)
    assert tm.verify(models.key, target).verdict == "copy"


def test_state_dict_needs_and_uses_the_architecture(files, models):
    with pytest.raises(ModelFileError, match="architecture"):
        tm.load_target(files / "state.pt")
    target = tm.load_target(files / "state.pt", spec=tm.ModelSpec("small_cnn", (1, 8, 8), 10))
    assert np.array_equal(target.predict_labels(models.data.x_test[:20]), tm.predict_labels(models.marked, models.data.x_test[:20]))


def test_pickled_module_is_refused_without_running_it(files):
    with pytest.raises(UnsafeFileError, match="arbitrary code"):
        tm.load_target(files / "pickled.pt")


def test_bad_model_files(tmp_path, files):
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    (tmp_path / "model.h5").write_bytes(b"x")
    with pytest.raises(ModelFileError, match="ONNX"):
        tm.load_target(tmp_path / "junk.onnx")
    with pytest.raises(ModelFileError):
        tm.load_target(tmp_path / "junk.safetensors")
    with pytest.raises(ModelFileError, match="unknown model format"):
        tm.load_target(tmp_path / "model.h5")
    with pytest.raises(ModelFileError, match="no model file"):
        tm.load_target(tmp_path / "absent.onnx")


def test_onnx_target_reports_shape_and_classes(files):
    target = tm.load_target(files / "m.onnx")
    assert target.input_shape == (1, 8, 8) and target.num_classes == 10


def test_saved_model_bytes_are_deterministic(tmp_path, models):
    """The same weights always give the same file, so its hash can be recorded and compared."""
    import hashlib

    digests = {hashlib.sha256(tm.save_model(models.marked, tmp_path / f"{i}.safetensors").read_bytes()).hexdigest() for i in range(10)}
    assert len(digests) == 1


def test_torch_target_asks_the_model_where_it_lives(models, digits):
    import copy

    from tracemark.errors import DeviceUnavailableError

    x = digits.x_test[:40]
    expected = tm.TorchTarget(models.marked).predict(x).labels
    on_cpu = tm.TorchTarget(copy.deepcopy(models.marked), device="cpu").predict(x).labels
    np.testing.assert_array_equal(on_cpu, expected)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match="cuda"):
            tm.TorchTarget(copy.deepcopy(models.marked), device="cuda")
    else:  # a model kept on the GPU is asked there, and answers like the CPU copy
        gpu_model = copy.deepcopy(models.marked).to("cuda")
        np.testing.assert_array_equal(tm.TorchTarget(gpu_model).predict(x).labels, expected)


def test_a_model_that_runs_out_of_memory_is_named_as_such_not_as_a_shape_error():
    """An informed thief's file can allocate at will when asked; the accuser is told that, not "wrong shape"."""
    from torch import nn

    from tracemark.errors import ShapeMismatchError, TargetError

    class Hog(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)[:, :10] + torch.empty(1 << 45)[:1]  # 128 TiB: the allocator refuses at once

    with pytest.raises(TargetError, match="ran out of memory") as caught:
        tm.TorchTarget(Hog(), description="hog").predict(np.zeros((2, 1, 8, 8), np.float32))
    assert not isinstance(caught.value, ShapeMismatchError)
