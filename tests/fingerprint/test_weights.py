"""The weight code: a copy's keyed signs are read back from its file; others, the base and other models are not named."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import tracemark as tm
from tests.fingerprint.conftest import CUSTOMERS, DIGITS_SETTINGS
from tracemark.fingerprint import FingerprintError, TrainSettings, mark_customer, trace, weight_trace
from tracemark.fingerprint.weights import add_weight_code, coded_parameters, log10_half_tail, sign_bits

MANY = [f"customer-{i:04d}" for i in range(1000)] + CUSTOMERS  # the copies' customers among 1,005
ALPHA = 1e-9


@pytest.fixture(scope="module")
def independent_cnn(models) -> torch.nn.Module:
    """A model of the base's architecture trained independently (other seed)."""
    model = tm.build_model("small_cnn", models.data.input_shape, 10, seed=1)
    tm.fit(model, tm.to_tensor_dataset(models.data.x_train, models.data.y_train), epochs=3, seed=1)
    return model


def test_each_copy_is_named_by_its_weights_alone(fingerprinted):
    for customer, model in fingerprinted.copies.items():
        result = weight_trace(fingerprinted.scheme, MANY, model, fingerprinted.base, alpha=ALPHA)
        assert result.applies and result.accused == [customer]
        assert result.best.customer == customer and result.best.log10_p_adjusted < -100
        assert result.runner_up.log10_p_adjusted > math.log10(ALPHA)
        assert result.compared == result.entries == sum(p.numel() for _, p in coded_parameters(fingerprinted.base))


def test_other_customers_copies_an_independent_model_and_the_base_are_not_named(fingerprinted, independent_cnn):
    scheme, base = fingerprinted.scheme, fingerprinted.base
    innocents = [c for c in MANY if c != "acme"]
    result = weight_trace(scheme, innocents, fingerprinted.copies["acme"], base, alpha=ALPHA)
    assert result.applies and result.accused == [] and result.best.log10_p_adjusted > math.log10(ALPHA)
    result = weight_trace(scheme, MANY, independent_cnn, base, alpha=ALPHA)
    assert result.applies and result.accused == [] and result.compared > 0.99 * result.entries
    result = weight_trace(scheme, MANY, base, base, alpha=ALPHA)
    assert result.compared == 0 and result.accused == [] and "equal the base" in result.note


def test_a_copy_fine_tuned_with_all_layers_is_still_named(fingerprinted, models):
    from tracemark.attacks import FineTune
    from tracemark.attacks.base import ThiefData

    thief = ThiefData(models.data.x_test[:300], models.data.y_test[:300], seed=1)
    for attack in (FineTune("FTAL", n_samples=300, epochs=5, lr=2e-3), FineTune("RTAL", n_samples=300, epochs=5, lr=2e-3)):
        stolen = attack.run(copy.deepcopy(fingerprinted.copies["globex"]), thief)
        result = trace(fingerprinted.scheme, MANY, stolen.target, base=fingerprinted.base, alpha=ALPHA)
        assert result.weights.accused == ["globex"], attack.name
        assert result.accused[0] == "globex" and set(result.accused) == {"globex"}


def test_pruned_weights_are_left_out_and_the_rest_still_names_the_copy(fingerprinted):
    from tracemark.attacks import Prune
    from tracemark.attacks.base import ThiefData

    stolen = Prune(0.9, "magnitude").run(copy.deepcopy(fingerprinted.copies["acme"]), ThiefData(np.zeros((0, 1, 8, 8)), np.zeros(0)))
    result = weight_trace(fingerprinted.scheme, MANY, stolen.target.module, fingerprinted.base, alpha=ALPHA)
    assert result.compared < 0.2 * result.entries and result.accused == ["acme"]
    # chance is half; 0.55 of ~5,000 compared signs is 7 standard deviations above it (0.598 on an AMD EPYC, 0.6+ on Intel)
    assert result.best.agreements > 0.55 * result.compared and result.best.log10_p_adjusted < np.log10(ALPHA)


def test_trace_reports_both_tests_and_splits_alpha(fingerprinted):
    result = trace(fingerprinted.scheme, MANY, tm.TorchTarget(fingerprinted.copies["initech"]), base=fingerprinted.base)
    assert result.accused == ["initech"] and result.alpha == ALPHA and result.weights.alpha == ALPHA / 2
    text = str(result)
    assert "weight test: CUSTOMER initech" in text and "split evenly" in text
    assert result.to_dict()["weights"]["customer"] == "initech"
    assert trace(fingerprinted.scheme, MANY, tm.TorchTarget(fingerprinted.copies["initech"])).weights is None


def test_shape_mismatch_or_no_weights_means_the_weight_test_does_not_apply(fingerprinted, models):
    scheme, base = fingerprinted.scheme, fingerprinted.base
    result = weight_trace(scheme, CUSTOMERS, models.independent, base, alpha=ALPHA)  # a LeNet
    assert not result.applies and result.accused == [] and "shape" in result.note and "another architecture" in result.note
    api = tm.CallableTarget(lambda x: tm.TorchTarget(fingerprinted.copies["acme"]).predict(x).labels,
                            description="prediction API", num_classes=10)
    traced = trace(scheme, CUSTOMERS, api, base=base)
    assert traced.accused == ["acme"]  # the black-box test still names it
    assert not traced.weights.applies and "not available" in traced.weights.note
    assert "weight test: does not apply" in str(traced)


def test_signs_are_keyed_balanced_and_the_tail_is_exact(fingerprinted):
    from scipy import stats

    scheme = fingerprinted.scheme
    a, b = sign_bits(scheme, "acme", 100_000), sign_bits(scheme, "globex", 100_000)
    assert np.array_equal(a, sign_bits(scheme, "acme", 100_000)) and np.array_equal(a[:999], sign_bits(scheme, "acme", 999))
    assert abs(a.mean() - 0.5) < 0.01 and abs((a == b).mean() - 0.5) < 0.01
    k = np.array([0, 500, 530, 600, 1000])
    assert np.allclose(log10_half_tail(k, 1000), stats.binom.logsf(k - 1, 1000, 0.5) / math.log(10))
    far = log10_half_tail(np.array([90_000]), 100_000)[0]  # scipy underflows to -inf here
    assert np.isfinite(far) and far < -10_000
    # at the 1e-4 level, a random pattern is accused about as often as the binomial says (exact null)
    rng = np.random.default_rng(0)
    hits = sum(log10_half_tail(np.array([rng.binomial(400, 0.5)]), 400)[0] <= -2 for _ in range(2000))
    assert hits < 60


def test_a_weight_code_that_alone_breaks_the_budget_is_refused(fingerprinted, models):
    settings = TrainSettings(**{**DIGITS_SETTINGS.__dict__, "weight_strength": 3.0, "max_clean_drop": 0.0, "max_steps": 50})
    with pytest.raises(FingerprintError, match="weight code alone costs"):
        mark_customer(models.base, fingerprinted.scheme, "hooli", models.data, settings=settings)
    with pytest.raises(ValueError, match="positive"):
        add_weight_code(copy.deepcopy(models.base), fingerprinted.scheme, "hooli", 0.0)
    with pytest.raises(ValueError, match="weight_strength"):
        TrainSettings(weight_strength=-0.1)
