"""The built-in CIFAR-style ResNet-18: shapes, size, and a save/load round trip with batch-norm buffers."""

from __future__ import annotations

import pytest
import torch

import tracemark as tm
from tracemark.errors import ModelFileError


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_resnet18_builds_and_answers(shape):
    model = tm.build_model("resnet18", shape, 10, seed=0).eval()
    with torch.no_grad():
        assert model(torch.rand(2, *shape)).shape == (2, 10)
    assert 11.1e6 < sum(p.numel() for p in model.parameters()) < 11.3e6


def test_resnet18_too_small_input_is_refused():
    with pytest.raises(ModelFileError, match="at least 8x8"):
        tm.build_model("resnet18", (3, 4, 4), 10)


def test_resnet18_round_trip_keeps_batch_norm_buffers(tmp_path):
    model = tm.build_model("resnet18", (3, 32, 32), 10, seed=1)
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32))  # move the running statistics off their initial values
    model.eval()
    tm.save_model(model, tmp_path / "r.safetensors")
    loaded = tm.load_model(tmp_path / "r.safetensors")
    assert loaded.tracemark_spec.arch == "resnet18"
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert torch.equal(model[1].running_mean, loaded[1].running_mean)
