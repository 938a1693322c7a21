"""The lab fed by torch Datasets: null profiles, the thief split, suites and the owner's model, as from the same arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, Subset

import tracemark as tm
from tracemark.attacks import Extract, FineTune, ThiefData, WeightNoise
from tracemark.errors import ShapeMismatchError
from tracemark.lab import MarkConfig, NullProfileError, build_null_profile, marked_victim, run_suite, split_thief


@pytest.fixture(scope="module")
def data(models) -> tm.ImageData:
    """Digits in the standard memory layout (load_dataset's channel stride sends gathered batches down another
    oneDNN convolution path; batches collated from a Dataset always have the standard layout)."""
    d = models.data
    return tm.ImageData("digits", d.x_train.copy(), d.y_train, d.x_test.copy(), d.y_test, d.num_classes)


def _sets(data: tm.ImageData):
    return tm.to_tensor_dataset(data.x_train, data.y_train), tm.to_tensor_dataset(data.x_test, data.y_test)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_null_profile_from_a_dataset_matches_the_arrays(models, data, tmp_path):
    options = dict(n_models=2, archs=("mlp", "lenet"), epochs=1, train_size=400)
    from_arrays, ref_arrays = build_null_profile(data, [models.key], **options)
    train, test = _sets(data)
    from_sets, ref_sets = build_null_profile(train, [models.key], test=test, num_classes=10, name="digits",
                                             device="cpu", folder=tmp_path, **options)
    assert from_sets.matches == from_arrays.matches
    assert [r.test_accuracy for r in from_sets.references] == [r.test_accuracy for r in from_arrays.references]
    assert all(_same(a, b) for a, b in zip(ref_arrays, ref_sets))
    assert from_sets.recipe["train_size"] == 400 and from_sets.dataset == "digits"
    assert sorted(p.name for p in tmp_path.iterdir())[0].startswith("digits-lenet-seed1001")
    with pytest.raises(NullProfileError, match="test= .* and num_classes="):
        build_null_profile(train, [models.key], n_models=1)


def test_split_thief_of_a_dataset_hands_out_subsets(data):
    train, _ = _sets(data)
    owner, thief = split_thief(train, 300, seed=4, device="cpu")
    assert isinstance(owner, Subset) and isinstance(thief.x, Subset) and thief.y is None and thief.has_labels
    assert list(owner.indices) == list(range(len(train) - 300)) and list(thief.x.indices)[0] == len(train) - 300
    assert thief.size() == 300 and thief.seed == 4 and thief.device == "cpu"


def test_a_suite_on_datasets_gives_the_same_records_as_on_arrays(models, data):
    attacks = [FineTune("FTLL", n_samples=300, epochs=1), WeightNoise(0.1), Extract(n_queries=300, epochs=1)]
    x, y = data.x_train[:300], data.y_train[:300]
    on_arrays = run_suite(attacks, models.marked, models.key, (data.x_test, data.y_test), ThiefData(x, y, seed=1))
    _, test = _sets(data)
    on_sets = run_suite(attacks, models.marked, models.key, test, ThiefData(tm.to_tensor_dataset(x, y), seed=1))
    assert on_sets.marked_accuracy == on_arrays.marked_accuracy
    assert all(r.error is None for r in on_sets.records + on_arrays.records)
    strip = lambda r: {k: v for k, v in r.to_dict().items() if k != "seconds" and k != "info"}  # noqa: E731
    assert [strip(r) for r in on_sets.records] == [strip(r) for r in on_arrays.records]
    assert on_sets.config["n_test"] == len(data.x_test) and on_sets.config["thief"]["n_images"] == 300


def test_a_suite_refuses_thief_images_of_another_shape_before_any_attack(models):
    class Wrong(Dataset):
        def __init__(self):
            self.read = set()

        def __len__(self) -> int:
            return 100

        def __getitem__(self, i: int):
            self.read.add(i)
            return np.zeros((3, 8, 8), dtype=np.float32), 0

    wrong = Wrong()
    with pytest.raises(ShapeMismatchError, match=r"in-domain images have shape \(3, 8, 8\).*\(1, 8, 8\)") as info:
        run_suite([FineTune("FTLL", n_samples=100, epochs=1)], models.marked, models.key,
                  (models.data.x_test, models.data.y_test), ThiefData(wrong))
    assert "\n" not in str(info.value) and wrong.read == {0}


def test_the_owner_marks_a_model_trained_from_a_dataset(models, data):
    train, test = _sets(data)
    config = MarkConfig(name="stream", epochs=2, n_triggers=20)
    model, key, info = marked_victim(train, config, test=test, num_classes=10, name="digits", device="cpu")
    assert info["trigger_accuracy"] >= 0.95 and info["marked_accuracy"] >= info["clean_accuracy"] - 0.02
    assert tm.verify(key, tm.TorchTarget(model)).verdict == "copy"
    assert info["marked_accuracy"] == pytest.approx(tm.accuracy(model, data.x_test, data.y_test))
