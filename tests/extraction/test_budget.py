"""The per-client marking budget: realised marks within cap × answered, spared inputs stay honest, unusual inputs
are marked past it, and several workers sharing one store keep one budget."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

import tracemark as tm
from tracemark.extraction import MarkingSecret, ResponseMarker, ResponseStore
from tracemark.extraction.marking import decide, input_key
from tracemark.extraction.profile import MarkingProfile
from tracemark.serve.clients import Client
from tracemark.serve.config import ServeConfig
from tracemark.serve.errors import ServeConfigError
from tracemark.targets.base import Answers

SECRET = MarkingSecret(bytes(range(32)))


def _answers(x: np.ndarray, seed: int = 0) -> Answers:
    probs = np.random.default_rng(seed).dirichlet(np.ones(10), size=len(x))
    return Answers(probs.argmax(1), probs)


def _grid(rng: np.random.Generator, n: int, shape: tuple[int, ...] = (1, 8, 8)) -> np.ndarray:
    return (np.round(rng.random((n, *shape)) * 255) / 255).astype(np.float32)


def test_served_marks_stay_within_the_cap_and_spared_inputs_stay_honest(serve_marked, victim, digits: tm.ImageData) -> None:
    cap = 0.01
    x = digits.x_train
    with torch.no_grad():
        own = victim(torch.from_numpy(x)).argmax(1).numpy()
    with serve_marked(victim, marking_rate=0.2, marking_cap=cap) as srv:
        client, token = srv.add("honest")
        with httpx.Client(base_url=srv.url, timeout=10.0) as http:

            def ask(inputs: np.ndarray) -> np.ndarray:
                r = http.post("/v1/predict", json={"inputs": inputs.tolist()}, headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 200, r.text
                return np.array(r.json()["labels"])

            first = []
            for start in range(0, len(x), 64):
                first.append(ask(x[start:start + 64]))
                answered = start + len(first[-1])
                altered = int((np.concatenate(first) != own[:answered]).sum())
                # realised marks never exceed the budget, although about 20% of inputs draw a mark
                assert altered == len(srv.responses.marked(client.id)) <= math.floor(cap * answered + 1e-9)
            first_labels = np.concatenate(first)
            marks = len(srv.responses.marked(client.id))
            spared = srv.responses.spared(client.id)
            assert marks >= math.floor(cap * len(x)) - 2 and len(spared) > 100  # the budget binds; most drawn marks spared
            assert srv.responses.answered(client.id) == len(x)
            # asked again (reversed): the budget has doubled, but every answer is the same as the first time
            again = np.concatenate([ask(x[::-1][start:start + 64]) for start in range(0, len(x), 64)])[::-1]
            assert np.array_equal(again, first_labels)
            assert len(srv.responses.marked(client.id)) == marks and srv.responses.spared(client.id) == spared
            assert cap * srv.responses.answered(client.id) >= marks + 10  # room that the spared inputs did not take
            # new inputs now draw marks from that room
            fresh = np.concatenate([ask(digits.x_test[start:start + 64]) for start in range(0, 256, 64)])
            with torch.no_grad():
                fresh_own = victim(torch.from_numpy(digits.x_test[:256])).argmax(1).numpy()
            assert int((fresh != fresh_own).sum()) >= 5
            assert len(srv.responses.marked(client.id)) <= cap * srv.responses.answered(client.id)
        listed = {c.client_id: c for c in srv.responses.clients()}[client.id]
        assert listed.answered == 2 * len(x) + 256 and listed.spared >= len(spared) and listed.marked > marks


def test_a_marked_input_stays_marked_and_a_spared_one_honest_whatever_the_budget(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    store = ResponseStore(tmp_path / "r.sqlite")
    marker = ResponseMarker(SECRET, store, rate=0.5, cap=0.01)
    alice = Client("c_alice", "alice", "")
    key = SECRET.client_key(alice.id)
    x = _grid(rng, 300)
    ans = _answers(x)
    first = marker(alice, x, ans).labels
    changed = set(np.flatnonzero(first != ans.labels).tolist())
    marked_keys = {input_key(v) for v in store.marked(alice.id).inputs}
    spared = store.spared(alice.id)
    assert 1 <= len(changed) == len(marked_keys) <= 3 and len(spared) > 100  # budget 3 of 300; about 150 drawn
    assert {input_key(x[i]) for i in changed} == marked_keys and not marked_keys & spared
    # grow the budget without drawing marks: an input whose draw says "honest", asked 20,000 times
    honest = next(v for v in _grid(rng, 50) if not decide(key, v, 0.5, 10).marked)
    filler = np.repeat(honest[None], 1000, axis=0)
    for _ in range(20):
        assert np.array_equal(marker(alice, filler, _answers(filler, 1)).labels, _answers(filler, 1).labels)
    marker.flush()
    assert store.answered(alice.id) == 20_300 and len(store.marked(alice.id)) < 0.01 * 20_300 - 100
    order = rng.permutation(len(x))
    again = marker(alice, x[order], Answers(ans.labels[order], ans.probabilities[order])).labels
    assert np.array_equal(again, first[order])  # spared inputs honest, marked ones marked, as the first time
    assert store.spared(alice.id) == spared and len(store.marked(alice.id)) == len(marked_keys)
    new = _grid(rng, 100)
    assert (marker(alice, new, _answers(new, 2)).labels != _answers(new, 2).labels).sum() >= 20  # the room was there


def test_unusual_inputs_are_marked_past_the_budget_and_count_towards_it(tmp_path: Path, digits: tm.ImageData) -> None:
    profile = MarkingProfile.calibrate(digits.x_train, unusual_share=0.05, boost=20, components=10, seed=0)
    store = ResponseStore(tmp_path / "r.sqlite")
    marker = ResponseMarker(SECRET, store, rate=0.02, profile=profile, cap=0.01)
    thief = Client("c_thief", "thief", "")
    noise = np.random.default_rng(3).random((600, *digits.input_shape), dtype=np.float32)
    assert (profile.scores(noise) > profile.threshold).all()
    for start in range(0, len(noise), 64):
        marker(thief, noise[start:start + 64], _answers(noise[start:start + 64]))
    marks = len(store.marked(thief.id))
    assert marks >= 60 > 0.01 * 600 and not store.spared(thief.id)  # unusual rate 0.205: about 123, cap 6
    # in-distribution inputs now: the unusual marks used the budget up, so drawn typical marks are all spared
    typical = digits.x_train[profile.scores(digits.x_train) <= profile.threshold]
    high = ResponseMarker(SECRET, store, rate=0.5, profile=profile, cap=0.01)
    out = high(thief, typical, _answers(typical, 4))
    assert np.array_equal(out.labels, _answers(typical, 4).labels)
    assert len(store.marked(thief.id)) == marks and len(store.spared(thief.id)) > 10


def test_two_workers_sharing_a_store_keep_one_budget(tmp_path: Path) -> None:
    cap, rng = 0.01, np.random.default_rng(5)
    path = tmp_path / "r.sqlite"
    workers = [ResponseMarker(SECRET, ResponseStore(path), rate=0.2, cap=cap) for _ in range(2)]
    bob = Client("c_bob", "bob", "")
    evidence = ResponseStore(path)
    x = _grid(rng, 4000)
    ans = _answers(x)
    answered, altered = 0, 0
    for n, start in enumerate(range(0, len(x), 50)):
        batch = slice(start, start + 50)
        out = workers[n % 2](bob, x[batch], Answers(ans.labels[batch], ans.probabilities[batch]))
        answered += 50
        altered += int((out.labels != ans.labels[batch]).sum())
        assert altered == len(evidence.marked(bob.id)) <= math.floor(cap * answered + 1e-9)
    assert altered >= cap * len(x) - 3  # one budget of 40, used: not two budgets, and not starved by the split
    # the same inputs through the other worker: the same answers
    swapped = np.concatenate([workers[(n + 1) % 2](bob, x[s:s + 50], Answers(ans.labels[s:s + 50], ans.probabilities[s:s + 50])).labels
                              for n, s in enumerate(range(0, len(x), 50))])
    first = np.concatenate([workers[n % 2](bob, x[s:s + 50], Answers(ans.labels[s:s + 50], ans.probabilities[s:s + 50])).labels
                            for n, s in enumerate(range(0, len(x), 50))])
    assert np.array_equal(swapped, first)


def test_requests_without_a_drawn_mark_do_not_touch_the_store_and_close_adds_their_count(tmp_path: Path, monkeypatch) -> None:
    store = ResponseStore(tmp_path / "r.sqlite")
    marker = ResponseMarker(SECRET, store, rate=0.01, cap=0.005)
    carol = Client("c_carol", "carol", "")
    key = SECRET.client_key(carol.id)
    x = np.stack([v for v in _grid(np.random.default_rng(6), 400) if not decide(key, v, 0.01, 10).marked][:300])

    def no_writes(*args, **kwargs):
        raise AssertionError("the store was written for a request without a drawn mark")

    with monkeypatch.context() as m:
        for name in ("settle", "add_answered", "record"):
            m.setattr(store, name, no_writes)
        m.setattr(store.db, "write", no_writes)
        for start in range(0, len(x), 30):
            marker(carol, x[start:start + 30], _answers(x[start:start + 30]))
    assert store.answered(carol.id) == 0
    marker.close()
    assert store.answered(carol.id) == 300
    marker.close()
    assert store.answered(carol.id) == 300  # counted once


def test_a_stopping_server_adds_its_uncounted_answers_to_the_budget(tmp_path: Path, secret_file: Path, victim, digits) -> None:
    from tests.servers import serve_app
    from tracemark.serve import ClientStore, create_app, from_module

    config = ServeConfig(model="in-memory", clients_db=str(tmp_path / "clients.sqlite"), audit_db=str(tmp_path / "audit.sqlite"),
                         responses_db=str(tmp_path / "responses.sqlite"), marking=True, marking_secret=str(secret_file),
                         marking_rate=0.0, rate=1e6, burst=1e6)  # rate 0: no request draws a mark, so none reaches the store
    issued = ClientStore(config.clients_db).add("dave")
    app = create_app(from_module(victim, "digits-cnn"), config)
    with serve_app(app, lifespan="on") as url, httpx.Client(base_url=url, timeout=10.0) as http:
        for start in range(0, 50, 10):
            r = http.post("/v1/predict", json={"inputs": digits.x_test[start:start + 10].tolist()},
                          headers={"Authorization": f"Bearer {issued.token}"})
            assert r.status_code == 200, r.text
        assert ResponseStore(config.responses_db).answered(issued.client.id) == 0
    assert ResponseStore(config.responses_db).answered(issued.client.id) == 50  # added at shut-down


def test_serve_config_validates_the_cap() -> None:
    assert ServeConfig(model="m").marking_cap == 0.005
    assert ServeConfig.from_json(ServeConfig(model="m", marking_cap=0.02).to_json()).marking_cap == 0.02
    with pytest.raises(ServeConfigError, match="cap"):
        ServeConfig(model="m", marking_cap=0.7)
    with pytest.raises(ServeConfigError, match="cap"):
        ServeConfig(model="m", marking_cap=-0.1)
