"""The lab's owner/thief split, out-of-domain pool and trigger augmentation."""

from __future__ import annotations

import numpy as np
import torch

import tracemark as tm
from tracemark.embedding import TriggerMixDataset
from tracemark.lab import out_of_domain_pool, split_thief
from tracemark.lab.augment import TransformedTriggers


def test_thief_and_owner_data_are_disjoint(digits):
    owner, thief = split_thief(digits, 300)
    assert len(thief.x) == 300 and len(owner.x_train) == len(digits.x_train) - 300
    assert np.array_equal(np.concatenate([owner.x_train, thief.x]), digits.x_train)
    ood = out_of_domain_pool("digits", 50, digits.input_shape)
    assert ood.shape == (50, *digits.input_shape) and 0 <= ood.min() and ood.max() <= 1


def test_transformed_triggers_alter_only_trigger_items(models):
    data = models.data
    mixed = TriggerMixDataset(tm.to_tensor_dataset(data.x_train, data.y_train), models.key, ratio=0.1)
    wrapped = TransformedTriggers(mixed, seed=1)
    assert len(wrapped) == len(mixed)
    for i in (0, 5, mixed.n_base - 1):
        assert torch.equal(wrapped[i][0], mixed[i][0])
    trigger_items = range(mixed.n_base, mixed.n_base + 40)
    changed = sum(not torch.equal(wrapped[i][0], mixed[i][0]) for i in trigger_items)
    assert 20 <= changed < 40  # one choice in five is "no transformation"
    assert all(wrapped[i][1] == mixed[i][1] for i in trigger_items)
    again = TransformedTriggers(mixed, seed=1)
    assert all(torch.equal(again[i][0], wrapped[i][0]) for i in trigger_items)
