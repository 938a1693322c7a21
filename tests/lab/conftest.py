"""Lab fixtures on digits: a thief split and reference models for a null profile."""

from __future__ import annotations

import pytest
import torch

from tracemark.attacks import ThiefData
from tracemark.keys.kinds import unrelated_pool_from_sample_photos

# one thread: on a shared 2-core machine torch's default oversubscribes and training crawls
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def lab_thief(models) -> ThiefData:
    data = models.data
    ood = unrelated_pool_from_sample_photos(b"lab-ood-pool-seed", 400, data.input_shape).astype("float32") / 255.0
    return ThiefData(x=data.x_train[:600], y=data.y_train[:600], ood_x=ood, seed=3)
