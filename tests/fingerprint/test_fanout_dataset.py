"""Customer copies from a torch Dataset or DataLoader: the same copies as from the same arrays, only the needed items read."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import tracemark as tm
from tests.fingerprint.conftest import DIGITS_SETTINGS
from tracemark.errors import ClassCountMismatchError, ShapeMismatchError
from tracemark.fingerprint import fanout, feature_cache, mark_customer

# a short fine-tune over a small pool: this compares the two paths, it does not need a strong code
SHORT = dataclasses.replace(DIGITS_SETTINGS, max_steps=400, target_code_accuracy=0.15, pool_size=400, validation_size=200)


class CountingDigits(Dataset):
    """The digits training arrays as a Dataset of (numpy image, int label), recording which items are read."""

    def __init__(self, x: np.ndarray, y: np.ndarray, shape: tuple[int, ...] | None = None):
        self.x, self.y, self.shape, self.read = x, y, shape, set()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        self.read.add(int(i))
        image = self.x[i] if self.shape is None else np.zeros(self.shape, dtype=np.float32)
        return image, int(self.y[i])


@pytest.fixture(scope="module")
def data(models) -> tm.ImageData:
    """The digits arrays in the standard memory layout.

    ``load_dataset`` gives the channel axis of 1×H×W images a stride that makes oneDNN take
    another convolution path for batches gathered from them (results differ by ~1e-6);
    batches collated from a Dataset always have the standard layout.
    """
    d = models.data
    return tm.ImageData(d.name, d.x_train.copy(), d.y_train, d.x_test.copy(), d.y_test, d.num_classes)


def _same_model(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _facts(report) -> dict:
    return {k: v for k, v in report.to_dict().items() if k != "seconds"}


def test_a_dataset_gives_the_same_copy_as_the_same_arrays(models, fingerprinted, data):
    validation = (data.x_test, data.y_test)
    from_arrays = mark_customer(models.marked, fingerprinted.scheme, "acme", data, settings=SHORT)
    train = CountingDigits(data.x_train, data.y_train)
    from_dataset = mark_customer(models.marked, fingerprinted.scheme, "acme", train, settings=SHORT,
                                 validation=validation, device="cpu", read_batch_size=1000)
    tensors = tm.to_tensor_dataset(data.x_train, data.y_train)
    from_loader = mark_customer(models.marked, fingerprinted.scheme, "acme", DataLoader(tensors, batch_size=7),
                                settings=SHORT, validation=validation)
    for model, report in (from_dataset, from_loader):
        assert _same_model(model, from_arrays[0])
        assert _facts(report) == _facts(from_arrays[1])
    assert from_arrays[1].steps > 0 and not _same_model(from_arrays[0], models.marked)
    # only the clean and stamped pools were read (validation came as arrays), never the whole set
    assert len(train.read) <= 2 * SHORT.pool_size < len(data.x_train)


def test_the_feature_cache_holds_only_the_pools(models, fingerprinted, data):
    train = CountingDigits(data.x_train, data.y_train)
    cache = feature_cache(models.marked, fingerprinted.scheme, train, SHORT)  # validation: a seeded subset of train
    same = feature_cache(models.marked, fingerprinted.scheme, tm.to_tensor_dataset(data.x_train, data.y_train), SHORT)
    assert len(cache.clean) == len(cache.stamped) == SHORT.pool_size
    assert len(cache.validation) == SHORT.validation_size and len(cache.queries) == fingerprinted.scheme.n_cells
    assert len(train.read) <= 2 * SHORT.pool_size + SHORT.validation_size
    for field in ("clean", "clean_labels", "teacher_log_probs", "stamped", "stamped_labels", "validation", "owner"):
        assert torch.equal(getattr(cache, field), getattr(same, field)), field
    assert cache.base_trigger_accuracy == 1.0 and len(cache.owner) == 90  # the 10 query cells are left to the code


def test_fanout_from_a_dataset_writes_the_copies(models, fingerprinted, data, tmp_path):
    train = tm.to_tensor_dataset(data.x_train, data.y_train)
    made = fanout(models.marked, fingerprinted.scheme, ["acme"], train, tmp_path, settings=SHORT,
                  validation=tm.to_tensor_dataset(data.x_test, data.y_test), device="cpu")
    from_arrays = mark_customer(models.marked, fingerprinted.scheme, "acme", data, settings=SHORT)[0]
    assert _same_model(tm.load_model(tmp_path / "acme.safetensors"), from_arrays)
    assert made.copies[0].clean_accuracy_before == pytest.approx(tm.accuracy(models.marked, data.x_test, data.y_test))


def test_a_dataset_of_the_wrong_shape_is_refused_before_any_work(models, fingerprinted, data, tmp_path):
    wrong = CountingDigits(data.x_train, data.y_train, shape=(3, 8, 8))
    with pytest.raises(ShapeMismatchError, match=r"shape \(3, 8, 8\).*\(1, 8, 8\)") as info:
        fanout(models.marked, fingerprinted.scheme, ["acme"], wrong, tmp_path, settings=SHORT)
    assert "\n" not in str(info.value)
    assert wrong.read == {0} and not (tmp_path / "acme.safetensors").exists()


def test_labels_outside_the_keys_classes_are_refused(models, fingerprinted, data):
    bad = CountingDigits(data.x_train, data.y_train + 10)
    with pytest.raises(ClassCountMismatchError, match="label 1[0-9]; the key has 10 classes"):
        feature_cache(models.marked, fingerprinted.scheme, bad, SHORT)


def test_a_device_that_is_not_here_is_refused(models, fingerprinted, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from tracemark.errors import DeviceUnavailableError

    with pytest.raises(DeviceUnavailableError, match="not available on this machine"):
        fanout(models.marked, fingerprinted.scheme, ["acme"], models.data, tmp_path, settings=SHORT, device="cuda")
