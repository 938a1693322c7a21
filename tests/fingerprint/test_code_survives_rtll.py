"""A black-box code put in the features survives re-training the re-initialised last layer (RTLL; issue 17, item 4).

The default copy's code lives in its head, which RTLL re-learns from clean data: the code is gone.
With ``feature_match`` and ``body_layers=1`` the stamped queries' penultimate features sit at the
base's mean features of the customer's labels, where any output layer trained on clean data reads
those labels.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest

import tracemark as tm
from tests.fingerprint.conftest import CUSTOMERS, DIGITS_SETTINGS
from tracemark.attacks import FineTune
from tracemark.attacks.base import ThiefData
from tracemark.fingerprint import TrainSettings, feature_cache, mark_customer, trace
from tracemark.fingerprint.fanout import train_start

REGISTRY = CUSTOMERS + [f"customer-{i:02d}" for i in range(45)]  # 50 registered customers
IN_FEATURES = dataclasses.replace(DIGITS_SETTINGS, feature_match=1.0, feature_preserve=1.0, body_layers=1,
                                  lr=5e-3, target_code_accuracy=0.35, max_steps=1500, pool_size=800, validation_size=300,
                                  weight_strength=0.0)
RTLL = FineTune("RTLL", n_samples=400, epochs=15, lr=2e-3)


@pytest.fixture(scope="module")
def thief(models) -> ThiefData:
    return ThiefData(models.data.x_train[:400], models.data.y_train[:400], seed=3)


@pytest.fixture(scope="module")
def feature_copy(models, fingerprinted):
    cache = feature_cache(models.base, fingerprinted.scheme, models.data, IN_FEATURES)
    return mark_customer(models.base, fingerprinted.scheme, "acme", models.data, settings=IN_FEATURES, cache=cache)


def _rtll(model, thief: ThiefData):
    return RTLL.run(copy.deepcopy(model), thief).model.eval()


def test_the_code_in_the_features_survives_rtll_and_names_only_its_customer(models, fingerprinted, feature_copy, thief):
    model, report = feature_copy
    assert report.reached_goal and report.clean_accuracy_after >= report.clean_accuracy_before - 0.02
    test = (models.data.x_test, models.data.y_test)
    attacked = _rtll(model, thief)
    assert tm.accuracy(attacked, *test) >= tm.accuracy(model, *test) - 0.02  # the thief stays within the 2-point budget
    result = trace(fingerprinted.scheme, REGISTRY, tm.TorchTarget(attacked))
    assert result.accused == ["acme"] and result.best.p_adjusted <= 1e-9
    # the same attacked copy against a registry without its customer: nobody is named
    assert trace(fingerprinted.scheme, [c for c in REGISTRY if c != "acme"], tm.TorchTarget(attacked)).accused == []


def test_rtll_removes_the_default_head_only_code_and_names_no_innocent(models, fingerprinted, thief):
    for model in (fingerprinted.copies["acme"], models.base):
        assert trace(fingerprinted.scheme, REGISTRY, tm.TorchTarget(_rtll(model, thief))).accused == []


def test_body_layers_moves_the_trained_part_back_over_layers_with_weights(models):
    base = models.base  # Conv, ReLU, Pool, Conv, ReLU, Pool, Flatten, Linear, ReLU, Linear
    assert [train_start(base, n) for n in (0, 1, 2, 3)] == [7, 3, 0, 0]
    with pytest.raises(ValueError, match="feature_match"):
        TrainSettings(feature_match=-1.0)
    with pytest.raises(ValueError, match="body_layers"):
        TrainSettings(body_layers=-1)
