"""HttpTarget against real HTTP servers on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from tests.servers import free_port, prediction_app, serve_app
from tracemark.errors import (
    ClassCountMismatchError,
    QueryBudgetExceededError,
    ShapeMismatchError,
    TargetResponseError,
    TargetUnreachableError,
)
from tracemark.targets.http import HttpTarget, inputs_sha256

SHAPE = (1, 4, 4)
CLASSES = 5
WEIGHTS = np.random.default_rng(0).normal(size=(16, CLASSES))


def logits(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1) @ WEIGHTS


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def inputs(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *SHAPE)).astype(np.float32)


@pytest.fixture
def app() -> FastAPI:
    return prediction_app(logits, num_classes=CLASSES, input_shape=SHAPE, fail_first=2, api_key="s3cret")


@pytest.fixture
def url(app: FastAPI) -> Iterator[str]:
    with serve_app(app) as base:
        yield base


def target(url: str, path: str = "/predict", **kwargs: object) -> HttpTarget:
    kwargs = {"api_key": "s3cret", "backoff": 0.01, **kwargs}
    return HttpTarget(url + path, **kwargs)  # type: ignore[arg-type]


def test_labels_and_probabilities_round_trip(url: str) -> None:
    x = inputs(7)
    with target(url, probabilities_field="probabilities", num_classes=CLASSES) as t:
        answers = t.predict(x)
    assert answers.labels.tolist() == logits(x).argmax(axis=1).tolist()
    assert answers.probabilities is not None
    np.testing.assert_allclose(answers.probabilities, softmax(logits(x).astype(np.float64)), rtol=1e-5)
    assert t.queries_used == 7 and [r.status for r in t.transcript] == [200]


def test_batches_into_ceil_n_over_batch_size_requests(url: str, app: FastAPI) -> None:
    x = inputs(10)
    t = target(url, batch_size=4)
    assert t.predict_labels(x).tolist() == logits(x).argmax(axis=1).tolist()
    assert app.state.hits["/predict"] == 3
    assert [(r.batch_index, r.n_inputs) for r in t.transcript] == [(0, 4), (1, 4), (2, 2)]
    assert [len(json.loads(b)["inputs"]) for b in app.state.bodies] == [4, 4, 2]
    t.predict(x[:1])
    assert t.transcript[-1].batch_index == 3  # indices keep counting across calls


def test_custom_template_and_dotted_score_field(url: str, app: FastAPI) -> None:
    x = inputs(6)
    template = {"data": {"instances": "{{inputs_flat}}"}, "model": "v2"}
    t = target(url, "/custom", request_template=template, response_field="result.scores", batch_size=4)
    answers = t.predict(x)
    assert answers.labels.tolist() == logits(x).argmax(axis=1).tolist()
    assert answers.probabilities is not None  # logits were turned into probabilities
    np.testing.assert_allclose(answers.probabilities.sum(axis=1), 1.0)
    sent = json.loads(app.state.bodies[0])
    assert sent["model"] == "v2" and np.asarray(sent["data"]["instances"]).shape == (4, 16)


def test_label_objects_field(url: str) -> None:
    x = inputs(3)
    template = {"data": {"instances": "{{inputs_flat}}"}}
    t = target(url, "/custom", request_template=template, response_field="result.items")
    answers = t.predict(x)
    assert answers.labels.tolist() == logits(x).argmax(axis=1).tolist()
    assert answers.probabilities is None


def test_retries_a_flaky_endpoint_and_records_failures(url: str, app: FastAPI) -> None:
    x = inputs(3)
    t = target(url, "/flaky", retries=3)
    assert t.predict_labels(x).tolist() == logits(x).argmax(axis=1).tolist()
    assert [(r.attempt, r.status) for r in t.transcript] == [(0, 500), (1, 500), (2, 200)]
    assert "internal error" in (t.transcript[0].error or "") and t.transcript[0].answer is None
    assert t.transcript[2].answer == logits(x).argmax(axis=1).tolist()
    assert app.state.hits["/flaky"] == 3 and t.queries_used == 9  # retries spend budget too


def test_gives_up_after_retries(url: str, app: FastAPI) -> None:
    with pytest.raises(TargetResponseError, match="HTTP 500.*2 attempt"):
        target(url, "/flaky", retries=1).predict(inputs(2))
    assert app.state.hits["/flaky"] == 2


def test_honours_retry_after_on_429(url: str) -> None:
    t = target(url, "/busy", backoff=0.0)
    t.predict(inputs(2))
    first, second = t.transcript
    assert (first.status, second.status) == (429, 200)
    gap = (datetime.fromisoformat(second.sent_at) - datetime.fromisoformat(first.sent_at)).total_seconds()
    assert 0.9 <= gap < 3.0


def test_budget_is_checked_before_sending(url: str, app: FastAPI) -> None:
    t = target(url, batch_size=4, max_queries=10)
    t.predict(inputs(8))
    with pytest.raises(QueryBudgetExceededError, match="budget of 10"):
        t.predict(inputs(4))
    assert app.state.hits["/predict"] == 2 and t.queries_used == 8
    t.predict(inputs(2))  # exactly spends the rest
    assert t.queries_used == 10


def test_budget_stops_retries(url: str, app: FastAPI) -> None:
    t = target(url, "/flaky", retries=5, max_queries=5)
    with pytest.raises(QueryBudgetExceededError):
        t.predict(inputs(2))
    assert app.state.hits["/flaky"] == 2 and t.queries_used == 4


def test_unreachable_port_fails_fast_with_named_error() -> None:
    bad = f"http://127.0.0.1:{free_port()}/predict"
    t = HttpTarget(bad, retries=1, backoff=0.01, timeout=2.0)
    started = time.monotonic()
    with pytest.raises(TargetUnreachableError, match=bad.replace(".", r"\.")):
        t.predict(inputs(2))
    assert time.monotonic() - started < 2.0
    assert [(r.status, r.attempt) for r in t.transcript] == [(None, 0)]  # refused: not retried


def test_non_json_answer_is_a_response_error_without_retry(url: str, app: FastAPI) -> None:
    with pytest.raises(TargetResponseError, match="not JSON.*this is not JSON"):
        target(url, "/text").predict(inputs(2))
    assert app.state.hits["/text"] == 1


def test_client_error_is_not_retried(url: str, app: FastAPI) -> None:
    t = target(url, api_key="wrong", retries=3)
    with pytest.raises(TargetResponseError, match="HTTP 401.*invalid API key"):
        t.predict(inputs(2))
    assert app.state.hits["/predict"] == 1 and t.transcript[0].status == 401


def test_timeout_is_unreachable_after_retries(url: str, app: FastAPI) -> None:
    t = target(url, "/slow", timeout=0.2, retries=1)
    started = time.monotonic()
    with pytest.raises(TargetUnreachableError, match="timed out"):
        t.predict(inputs(2))
    assert time.monotonic() - started < 1.0
    assert app.state.hits["/slow"] == 2


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        ({"labels": [0]}, "labels", "list of 2"),
        ({"other": [0, 1]}, "labels", "no field 'labels'"),
        ({"labels": ["cat", "dog"]}, "labels", "not an integer label"),
        ({"out": {"scores": [[0.1, 0.9], [0.3]]}}, "out.scores", "ragged"),
    ],
)
def test_malformed_answers_say_what_was_expected(payload: object, field: str, message: str) -> None:
    app = FastAPI()
    app.post("/p")(lambda: JSONResponse(payload))
    with serve_app(app) as base, pytest.raises(TargetResponseError, match=message):
        HttpTarget(base + "/p", response_field=field).predict(inputs(2))


def test_probability_width_must_match_num_classes(url: str) -> None:
    with pytest.raises(ClassCountMismatchError, match="expected 3"):
        target(url, probabilities_field="probabilities", num_classes=3).predict(inputs(2))


def test_rate_limit_spaces_requests(url: str) -> None:
    t = target(url, batch_size=1, rate=20.0)
    started = time.monotonic()
    t.predict(inputs(5))
    assert time.monotonic() - started >= 4 / 20 - 0.01


def test_transcript_saved_atomically_with_input_hashes(url: str, tmp_path: Path) -> None:
    x = inputs(5)
    t = target(url, batch_size=2)
    t.predict(x)
    path = t.save_transcript(tmp_path / "evidence" / "transcript.json")
    assert [p.name for p in path.parent.iterdir()] == ["transcript.json"]  # no temp file left
    text = path.read_text()
    assert "s3cret" not in text
    saved = json.loads(text)
    assert saved["queries_used"] == 5 and saved["url"] == url + "/predict"
    hashes = [r["input_sha256"] for r in saved["records"]]
    assert hashes == [inputs_sha256(x[0:2]), inputs_sha256(x[2:4]), inputs_sha256(x[4:5])]
    assert [r["answer"] for r in saved["records"]] == [a.tolist() for a in np.split(logits(x).argmax(axis=1), [2, 4])]


def test_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="inputs"):
        HttpTarget("http://127.0.0.1:1/p", request_template={"x": 1})
    with pytest.raises(TargetUnreachableError, match="http"):
        HttpTarget("ftp://example.com/p")
    description = HttpTarget("https://u:pw@example.com/p?key=abc").description
    assert "key=***" in description and "pw" not in description and "abc" not in description


def test_bad_inputs_are_refused_before_sending(url: str, app: FastAPI) -> None:
    with pytest.raises(ShapeMismatchError, match=r"\(1, 4, 4\)"):
        target(url, input_shape=SHAPE).predict(np.zeros((2, 1, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        target(url).predict(np.full((1, *SHAPE), np.nan, dtype=np.float32))
    assert app.state.hits["/predict"] == 0


def test_rounded_probabilities_are_kept_not_softmaxed() -> None:
    from tracemark.targets.http import _to_probabilities

    rounded = np.array([[0.91, 0.05, 0.02, 0.0], [0.33, 0.33, 0.33, 0.0]])
    probs = _to_probabilities(rounded)
    assert np.allclose(probs.sum(axis=1), 1.0) and probs[0, 0] > 0.9
    logits = np.array([[2.0, -1.0, 0.5, 0.0]])
    assert _to_probabilities(logits)[0, 0] == pytest.approx(np.exp(2) / np.exp([2, -1, 0.5, 0]).sum())
