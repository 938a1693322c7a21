"""The thief's resources on digits: the labelled training set and an out-of-domain photo pool."""

from __future__ import annotations

import pytest
import torch

from tracemark.attacks import ThiefData
from tracemark.keys.kinds import unrelated_pool_from_sample_photos

# one thread: on a shared 2-core machine, torch's default of one thread per core oversubscribes
# and the session's training fixtures run several times slower
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def thief(models) -> ThiefData:
    data = models.data
    ood = unrelated_pool_from_sample_photos(b"thief-ood-pool-seed", 1000, data.input_shape).astype("float32") / 255.0
    return ThiefData(x=data.x_train, y=data.y_train, ood_x=ood, seed=7)
