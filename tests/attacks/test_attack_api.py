"""API attacks: label-only extraction (locally and over HTTP), distillation, query-time transforms."""

from __future__ import annotations

import numpy as np
import pytest

import tracemark as tm
from tracemark.attacks import AttackError, Distill, Extract, InputTransform
from tracemark.attacks.transform import bit_depth, blur, resample
from tests.servers import prediction_app, serve_app


def _acc(target: tm.Target, data: tm.ImageData) -> float:
    return float(np.mean(target.predict_labels(data.x_test) == data.y_test))


def test_label_only_clone_reaches_90_percent_of_the_victim(models, thief):
    data = models.data
    victim = tm.accuracy(models.marked, data.x_test, data.y_test)
    stolen = Extract(arch="lenet", pool="in", n_queries=len(thief.x), epochs=12).run(tm.TorchTarget(models.marked), thief)
    assert stolen.info["queries"] == len(thief.x)
    assert _acc(stolen.target, data) >= 0.9 * victim


def test_extraction_runs_over_http_with_labels_only(models, thief):
    data = models.data
    victim = tm.accuracy(models.marked, data.x_test, data.y_test)
    app = prediction_app(lambda x: tm.TorchTarget(models.marked).predict(x).probabilities, num_classes=10)
    with serve_app(app) as base:
        api = tm.HttpTarget(base + "/predict", batch_size=500, num_classes=10)
        stolen = Extract(arch="small_cnn", n_queries=1000, epochs=10).run(api, thief)
        assert api.queries_used == 1000
    assert _acc(stolen.target, data) >= 0.85 * victim


def test_out_of_domain_pool_is_what_gets_queried(models, thief):
    asked: list[np.ndarray] = []

    def spy(x: np.ndarray) -> np.ndarray:
        asked.append(x)
        return tm.TorchTarget(models.marked).predict(x).probabilities

    Extract(pool="ood", n_queries=300, epochs=1).run(tm.CallableTarget(spy, num_classes=10), thief)
    assert np.array_equal(np.concatenate(asked), thief.ood_x[:300])
    with pytest.raises(AttackError):
        Extract(pool="ood").run(models.marked, type(thief)(x=thief.x))


def test_distillation_student_matches_the_teacher(models, thief):
    data = models.data
    victim = tm.accuracy(models.marked, data.x_test, data.y_test)
    stolen = Distill(arch="small_cnn", n_queries=len(thief.x), epochs=8).run(models.marked, thief)
    assert _acc(stolen.target, data) >= 0.9 * victim


def test_distillation_needs_probabilities(models, thief):
    labels_only = tm.CallableTarget(lambda x: tm.predict_labels(models.marked, x), num_classes=10)
    with pytest.raises(AttackError):
        Distill(n_queries=50, epochs=1).run(labels_only, thief)


def test_transforms_alter_inputs_as_declared(models):
    x = models.data.x_test[:50]
    four = bit_depth(x, 2)
    assert len(np.unique(four)) <= 4
    assert blur(x, 1.0).std() < x.std()
    # after shrinking by 2 and enlarging back, the image holds no more than a quarter of the detail
    low = resample(x, 2.0)
    assert low.shape == x.shape and np.abs(low - x).mean() > 0.01


@pytest.mark.parametrize("transform,amount", [("noise", 0.1), ("blur", 0.7), ("resample", 2.0), ("bitdepth", 3)])
def test_transformed_target_forwards_altered_queries(models, thief, transform, amount):
    seen: list[np.ndarray] = []

    def spy(x: np.ndarray) -> np.ndarray:
        seen.append(x)
        return tm.predict_labels(models.marked, x)

    attack = InputTransform(transform, amount)
    stolen = attack.run(tm.CallableTarget(spy, num_classes=10), thief)
    x = models.data.x_test[:20]
    answers = stolen.target.predict_labels(x)
    assert answers.shape == (20,)
    assert np.allclose(seen[0], attack.function(thief.seed)(x))
    assert not np.allclose(seen[0], x)
