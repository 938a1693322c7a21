"""Embedding a user's own module, fed by a streamed Dataset, on a chosen device."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import tracemark as tm
from tracemark.data.devices import resolve_device
from tracemark.errors import DatasetItemError, DeviceUnavailableError, ShapeMismatchError

TINT = np.array([1.0, 0.7, 0.4], dtype=np.float32)[:, None, None]


class TintedDigits(Dataset):
    """Digits upsampled to 16×16 and tinted into 3 channels, made item by item (never stored as a whole)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, dtype: type = np.float32):
        self.images, self.labels, self.dtype = images, labels, dtype

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        grey = self.images[index, 0].repeat(2, axis=0).repeat(2, axis=1)
        shade = 0.8 + 0.2 * ((index * 7) % 5) / 4  # a per-item brightness, so channels are not constant ratios
        return torch.from_numpy((TINT * grey * shade).astype(self.dtype)), int(self.labels[index])


class ResidualNet(nn.Module):
    """A user's module outside the registry: RGB input, batch norm, one residual block."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = F.relu(h + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(h))))))
        return self.head(F.adaptive_avg_pool2d(h, 4).flatten(1))


def _trained(dataset: Dataset, seed: int) -> ResidualNet:
    torch.manual_seed(seed)
    net = ResidualNet()
    tm.fit(net, dataset, epochs=6, seed=seed, device="cpu")
    return net


@pytest.fixture(scope="module")
def tinted(digits: tm.ImageData) -> tuple[TintedDigits, TintedDigits]:
    return TintedDigits(digits.x_train, digits.y_train), TintedDigits(digits.x_test, digits.y_test)


def test_user_module_fed_by_a_dataset_is_marked_and_verified(tinted):
    train, test = tinted
    sample = np.stack([train[i][0].numpy() for i in range(400)])
    labels = np.array([train[i][1] for i in range(400)])
    key = tm.WatermarkKey.generate("content", images=sample, labels=labels, n_triggers=30, seed=b"u" * 32)
    assert tuple(key.input_shape) == (3, 16, 16)
    net = _trained(train, seed=0)
    base_acc = tm.accuracy(net, test)
    assert base_acc > 0.9
    report = tm.embed(net, key, DataLoader(train, batch_size=64), validation=test, device="cpu",
                      max_clean_drop=0.01, lr=3e-3, batch_size=64)
    assert report.reached_goal, report
    assert report.clean_accuracy_before == pytest.approx(base_acc) and report.trigger_accuracy_after == 1.0
    assert tm.verify(key, tm.TorchTarget(net)).verdict == "copy"
    assert tm.assess(net, key, test, device="cpu").trigger_accuracy_after == 1.0
    independent = _trained(train, seed=1)
    assert tm.verify(key, tm.TorchTarget(independent)).verdict == "no-evidence"


def test_imagedata_and_the_same_arrays_as_a_dataset_give_identical_weights(models):
    data = models.data
    val = (data.x_test[:200], data.y_test[:200])
    settings = dict(max_steps=30, eval_every=10, validation=val, seed=4, device="cpu")
    from_arrays = copy.deepcopy(models.base)
    r1 = tm.embed(from_arrays, models.key, data, **settings)
    for workers in (0, 1):
        from_dataset = copy.deepcopy(models.base)
        r2 = tm.embed(from_dataset, models.key, tm.to_tensor_dataset(data.x_train, data.y_train), num_workers=workers,
                      **settings)
        assert r2.steps == r1.steps and r2.trigger_accuracy_after == r1.trigger_accuracy_after
        for name, tensor in from_arrays.state_dict().items():
            assert torch.equal(tensor, from_dataset.state_dict()[name]), name


def test_accuracy_and_predictions_stream_a_dataset(models):
    data = models.data
    ds = TensorDataset(torch.from_numpy(data.x_test), torch.from_numpy(data.y_test))
    assert tm.accuracy(models.base, ds, batch_size=50) == pytest.approx(tm.accuracy(models.base, data.x_test, data.y_test))
    assert np.array_equal(tm.predict_labels(models.base, DataLoader(ds, batch_size=7)),
                          tm.predict_labels(models.base, data.x_test))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_device_that_is_not_there_is_one_clear_error(models):
    with pytest.raises(DeviceUnavailableError, match="not available on this machine; available here: .*cpu"):
        tm.embed(copy.deepcopy(models.base), models.key, models.data, device="cuda")
    with pytest.raises(DeviceUnavailableError):
        resolve_device("cuda:3")
    assert resolve_device(None) == torch.device("mps" if torch.backends.mps.is_available() else "cpu")


def test_wrong_shape_or_dtype_is_refused_before_any_step(models, tinted):
    train, _ = tinted
    net = copy.deepcopy(models.base)  # takes 1×8×8, like the key
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ShapeMismatchError, match=r"shape \(3, 16, 16\), the key's triggers are \(1, 8, 8\)"):
        tm.embed(net, models.key, train, device="cpu")
    as_bytes = TensorDataset(torch.from_numpy((models.data.x_train * 255).astype(np.uint8)),
                             torch.from_numpy(models.data.y_train))
    with pytest.raises(DatasetItemError, match="uint8 images"):
        tm.embed(net, models.key, as_bytes, device="cpu")
    float_labels = TensorDataset(torch.from_numpy(models.data.x_train), torch.from_numpy(models.data.y_train).float())
    with pytest.raises(DatasetItemError, match="integer class"):
        tm.fit(net, float_labels, device="cpu")
    streamed = _Stream(models.data.x_train, models.data.y_train)
    with pytest.raises(DatasetItemError, match="map-style Dataset"):
        tm.embed(net, models.key, streamed, device="cpu")
    assert all(torch.equal(t, before[n]) for n, t in net.state_dict().items())
    tm.fit(net, DataLoader(streamed, batch_size=64), epochs=1, device="cpu")  # fit takes any iterable dataset


class _Stream(IterableDataset):
    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y

    def __iter__(self):
        return ((torch.from_numpy(x), int(y)) for x, y in zip(self.x, self.y))
