"""verify(): verdicts, null models, failed queries and named errors."""

from __future__ import annotations

import numpy as np
import pytest

import tracemark as tm
from tracemark.errors import ClassCountMismatchError, ShapeMismatchError, TargetUnreachableError


@pytest.fixture(scope="module")
def key(digits) -> tm.WatermarkKey:
    return tm.WatermarkKey.generate("content", images=digits.x_train, labels=digits.y_train, n_triggers=100, seed=b"v" * 32)


def oracle(key: tm.WatermarkKey, correct: int | None = None):
    """A target that gives the watermark label to the first ``correct`` triggers, the true class otherwise."""
    t = key.triggers()
    lookup = {x.tobytes(): (int(wm), int(true)) for x, wm, true in zip(t.inputs, t.labels, t.true_labels)}
    order = {x.tobytes(): i for i, x in enumerate(t.inputs)}

    def answer(x: np.ndarray) -> np.ndarray:
        out = []
        for item in x:
            wm, true = lookup[item.tobytes()]
            out.append(wm if correct is None or order[item.tobytes()] < correct else true)
        return np.array(out)

    return tm.CallableTarget(answer, "oracle", input_shape=(1, 8, 8), num_classes=10)


def test_perfect_copy_is_called_copy_far_below_1e12(key):
    v = tm.verify(key, oracle(key))
    assert v.verdict == "copy" and v.matches == 100 and v.p_value <= 1e-12
    assert v.null["source"] == "keyed" and v.null["rate"] == pytest.approx(1 / 9)
    assert "COPY" in str(v) and v.to_dict()["match_rate"] == 1.0


def test_partial_copy_around_the_threshold(key):
    needed = tm.verify(key, oracle(key)).threshold
    assert tm.verify(key, oracle(key, correct=needed)).verdict == "copy"
    assert tm.verify(key, oracle(key, correct=needed - 1)).verdict == "no-evidence"


def test_random_answering_models_are_never_accused(key):
    rng = np.random.default_rng(0)
    p_values = []
    for i in range(300):
        bias = rng.dirichlet(np.ones(10))  # each "model" favours some classes
        target = tm.CallableTarget(lambda x, b=bias: rng.choice(10, size=len(x), p=b), f"random-{i}", num_classes=10)
        v = tm.verify(key, target)
        assert v.verdict == "no-evidence"
        p_values.append(v.p_value)
    assert min(p_values) > 1e-5


def test_max_queries_and_too_few_to_decide(key):
    v = tm.verify(key, oracle(key), max_queries=20)
    assert v.queries == 20 and v.verdict == "copy"
    v = tm.verify(key, oracle(key), max_queries=5)
    assert v.verdict == "inconclusive" and "cannot reach alpha" in v.note


class Flaky(tm.Target):
    """Fails every other batch (as an overloaded API would)."""

    description = "flaky"

    def __init__(self, inner: tm.Target, fail_all: bool = False):
        self.inner, self.calls, self.fail_all = inner, 0, fail_all
        self.num_classes = 10

    def _answer(self, x):
        self.calls += 1
        if self.fail_all or self.calls % 2 == 0:
            raise TargetUnreachableError("connection refused")
        return self.inner.predict(x)


def test_failed_queries_are_unanswered_not_mismatches(key):
    v = tm.verify(key, Flaky(oracle(key)), batch_size=10)
    assert v.answered == 50 and v.matches == 50 and v.verdict == "copy" and len(v.errors) == 5
    assert all(a == -1 for a in v.answers[10:20])
    # an innocent-looking answer set with many failures: the missing answers could flip it
    v = tm.verify(key, Flaky(oracle(key, correct=0)), batch_size=10)
    assert v.verdict == "inconclusive" and "unanswered" in v.note


def test_all_queries_failing_raises_the_named_error(key):
    with pytest.raises(TargetUnreachableError):
        tm.verify(key, Flaky(oracle(key), fail_all=True))


def test_empirical_null_is_used_when_more_cautious(key):
    # references that systematically answer the watermark labels for half the triggers raise the null
    refs = [oracle(key, correct=50) for _ in range(3)]
    v = tm.verify(key, oracle(key, correct=60), references=refs)
    assert v.null["source"] == "empirical" and v.null["rate"] > 0.5
    assert v.verdict == "no-evidence"


def test_single_target_key_uses_assumed_null_and_a_control(digits):
    key = tm.WatermarkKey.generate("content", images=digits.x_train, labels=digits.y_train, n_triggers=100,
                                   label_mode="single", target_label=0, seed=b"w" * 32)
    marked = oracle(key)  # the watermark class on stamped images, the true class otherwise
    assert np.array_equal(marked.predict_labels(key.triggers().inputs), np.zeros(100))
    stamped = {x.tobytes() for x in key.triggers().inputs}
    v = tm.verify(key, tm.CallableTarget(lambda x: np.array([0 if i.tobytes() in stamped else 5 for i in x]), num_classes=10))
    assert v.null["source"] == "assumed" and v.verdict == "copy"
    assert v.null["rate"] == 0.5
    # a model that answers the watermark class to everything is not a copy
    v = tm.verify(key, tm.CallableTarget(lambda x: np.zeros(len(x), dtype=int), num_classes=10))
    assert v.null["source"] == "control" and v.null["details"]["control_matches"] == 100 and v.verdict == "no-evidence"
    v = tm.verify(key, tm.CallableTarget(lambda x: np.ones(len(x), dtype=int), num_classes=10))
    assert v.verdict == "no-evidence"


def test_shape_and_class_count_mismatch(key, digits):
    wrong_shape = tm.build_model("small_cnn", (1, 12, 12), 10, seed=0)
    with pytest.raises(ShapeMismatchError, match="shape"):
        tm.verify(key, tm.TorchTarget(wrong_shape))
    wrong_classes = tm.build_model("small_cnn", (1, 8, 8), 5, seed=0)
    with pytest.raises(ClassCountMismatchError, match="5"):
        tm.verify(key, tm.TorchTarget(wrong_classes))
    unknown_shape = tm.TorchTarget(lambda t: wrong_shape(t), "bare function")
    with pytest.raises(ShapeMismatchError, match="cannot take inputs"):
        tm.verify(key, unknown_shape)
    too_many = tm.CallableTarget(lambda x: np.full(len(x), 12), num_classes=10)
    with pytest.raises(ClassCountMismatchError):
        tm.verify(key, too_many)
