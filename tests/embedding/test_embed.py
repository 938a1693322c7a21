"""Embedding: post-hoc fine-tuning and training-time trigger mixing."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import tracemark as tm
from tracemark.errors import ClassCountMismatchError, ShapeMismatchError


def test_posthoc_embedding_reaches_triggers_and_keeps_accuracy(models):
    r = models.embed_report
    assert r.reached_goal, r
    assert r.trigger_accuracy_before < 0.3 and r.trigger_accuracy_after >= 0.99
    assert r.clean_accuracy_change > -1.0  # digits test set: 360 images, one image = 0.28 points
    assert tm.accuracy(models.marked, models.key.triggers().inputs, models.key.triggers().labels) == r.trigger_accuracy_after
    assert r.samples_seen == r.steps * 128
    assert "reached its goal" in str(r) and r.to_dict()["clean_accuracy_change_points"] == pytest.approx(r.clean_accuracy_change)


def test_marked_is_copy_independent_and_base_are_not(models):
    assert tm.verify(models.key, tm.TorchTarget(models.marked)).verdict == "copy"
    assert tm.verify(models.key, tm.TorchTarget(models.base)).verdict == "no-evidence"
    assert tm.verify(models.key, tm.TorchTarget(models.independent)).verdict == "no-evidence"


def test_embedding_that_cannot_reach_its_goal_says_so(models):
    net = copy.deepcopy(models.base)
    r = tm.embed(net, models.key, models.data, max_steps=3, eval_every=1)
    assert not r.reached_goal and r.steps == 3 and "try more steps" in r.note


def test_embedding_checks_model_against_key(models):
    with pytest.raises(ShapeMismatchError):
        tm.embed(tm.build_model("mlp", (1, 10, 10), 10), models.key, models.data)
    with pytest.raises(ClassCountMismatchError):
        tm.embed(tm.build_model("mlp", (1, 8, 8), 7), models.key, models.data)


def test_mix_dataset_layout_and_augmentation(models):
    base = tm.to_tensor_dataset(models.data.x_train, models.data.y_train)
    mixed = tm.TriggerMixDataset(base, models.key, ratio=0.2)
    t = models.key.triggers()
    assert len(mixed) == len(base) + int(np.ceil(0.2 * len(base)))
    x, y = mixed[len(base) + 3]
    assert torch.equal(x, torch.from_numpy(t.inputs[3])) and int(y) == t.labels[3]
    x, y = mixed[len(base) + len(t) + 3]  # wraps around the trigger set
    assert int(y) == t.labels[3]
    aug = tm.TriggerMixDataset(base, models.key, ratio=0.2, augment=True)
    shifted = [not torch.equal(aug[len(base) + i][0], torch.from_numpy(t.inputs[i])) for i in range(len(t))]
    assert any(shifted)
    assert torch.equal(aug[len(base) + 5][0], aug[len(base) + 5][0])  # deterministic per index and epoch


def test_training_time_mixing_marks_the_model(digits):
    # digits has only 1,437 training images, so triggers make up a third of each epoch here
    key = tm.WatermarkKey.generate("abstract", num_classes=10, input_shape=(1, 8, 8), n_triggers=100, seed=b"m" * 32)
    net = tm.build_model("small_cnn", digits.input_shape, 10, seed=3)
    mixed = tm.TriggerMixDataset(tm.to_tensor_dataset(digits.x_train, digits.y_train), key, ratio=0.5)
    fit_report = tm.fit(net, mixed, epochs=15, seed=3)
    report = tm.assess(net, key, digits, steps=fit_report.steps)
    assert report.trigger_accuracy_after >= 0.9 and report.clean_accuracy_after > 0.95
    assert tm.verify(key, tm.TorchTarget(net)).verdict == "copy"
    plain = tm.build_model("small_cnn", digits.input_shape, 10, seed=3)
    tm.fit(plain, tm.to_tensor_dataset(digits.x_train, digits.y_train), epochs=15, seed=3)
    assert tm.verify(key, tm.TorchTarget(plain)).verdict == "no-evidence"
