"""Response marking: the keyed rule, the secret file, the evidence store, and the real server on loopback."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import numpy as np
import pytest

from tracemark.extraction import MarkingSecret, MarkingSecretError, ResponseMarker, ResponseStore, ResponseStoreError
from tracemark.extraction.marking import ENV_SECRET, decide, input_key, marked_answer
from tracemark.serve.clients import Client
from tracemark.targets.base import Answers

SECRET = MarkingSecret(bytes(range(32)))


def _client(name: str) -> Client:
    return Client(f"c_{name}", name, "2026-01-01T00:00:00.000000Z")


def test_rule_marks_about_rate_and_always_a_different_label() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((4000, 1, 8, 8), dtype=np.float32)
    key = SECRET.client_key("c_alice")
    decisions = [decide(key, v, 0.05, 10) for v in x]
    marked = sum(d.marked for d in decisions)
    assert 140 <= marked <= 260  # Binomial(4000, 0.05): mean 200, sd 13.8
    offsets = np.bincount([d.offset for d in decisions], minlength=9)
    assert len(offsets) == 9 and offsets.min() > 300  # offsets 0..8, roughly uniform (mean 444)
    probs = rng.dirichlet(np.ones(10), size=50)
    for row in probs:
        label = int(row.argmax())
        for offset in range(9):
            wrong, served = marked_answer(label, row, offset)
            assert wrong != label and int(served.argmax()) == wrong
            assert sorted(served) == sorted(row) and served[label] == row[wrong]


def test_rule_is_per_client_and_ignores_noise_below_half_a_grid_step() -> None:
    rng = np.random.default_rng(1)
    x = np.round(rng.random((3000, 1, 8, 8)) * 255).astype(np.float32) / 255
    a, b = SECRET.client_key("c_alice"), SECRET.client_key("c_bob")
    marked_a = {i for i, v in enumerate(x) if decide(a, v, 0.05, 10).marked}
    marked_b = {i for i, v in enumerate(x) if decide(b, v, 0.05, 10).marked}
    assert marked_a and marked_b and len(marked_a & marked_b) <= 0.2 * len(marked_a)
    noisy = x + rng.uniform(-0.4 / 255, 0.4 / 255, size=x.shape).astype(np.float32)
    assert [decide(a, v, 0.05, 10) for v in noisy] == [decide(a, v, 0.05, 10) for v in x]
    assert input_key(noisy[0]) == input_key(x[0]) != input_key(x[1])
    assert MarkingSecret(bytes(32)).client_key("c_alice") != a


def test_secret_file_is_owner_only_and_refused_when_readable_by_others(tmp_path: Path, monkeypatch) -> None:
    path = SECRET.save(tmp_path / "m.secret")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert MarkingSecret.load(path).client_key("x") == SECRET.client_key("x")
    assert bytes(range(32)).hex() not in SECRET.fingerprint and bytes(range(32)).hex() not in repr(SECRET)
    os.chmod(path, 0o644)
    with pytest.raises(MarkingSecretError, match="chmod 600"):
        MarkingSecret.load(path)
    bad = tmp_path / "bad"
    bad.write_text("hello\n")
    os.chmod(bad, 0o600)
    with pytest.raises(MarkingSecretError, match="not a tracemark marking secret"):
        MarkingSecret.load(bad)
    monkeypatch.delenv(ENV_SECRET, raising=False)
    with pytest.raises(MarkingSecretError, match=ENV_SECRET):
        MarkingSecret.resolve(None)
    monkeypatch.setenv(ENV_SECRET, bytes(range(32)).hex())
    assert MarkingSecret.resolve(None).fingerprint == SECRET.fingerprint


def test_marker_keeps_only_marked_inputs_and_honours_client_rates(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.random((2000, 1, 8, 8), dtype=np.float32)
    probs = rng.dirichlet(np.ones(10), size=len(x))
    store = ResponseStore(tmp_path / "r.sqlite")
    marker = ResponseMarker(SECRET, store, rate=0.02, cap=None)
    alice, bob = _client("alice"), _client("bob")
    store.set_rate(bob, 0.0)
    out = marker(alice, x, Answers(probs.argmax(1), probs))
    changed = np.flatnonzero(out.labels != probs.argmax(1))
    assert 15 <= len(changed) <= 70 and (out.probabilities.argmax(1) == out.labels).all()
    kept = store.marked(alice.id)
    assert len(kept) == len(changed) and kept.num_classes == 10
    order = np.argsort([input_key(v) for v in x[changed]])
    got = np.argsort([input_key(v) for v in kept.inputs])
    assert np.array_equal(kept.inputs[got], x[changed][order])
    assert np.array_equal(kept.served_labels[got], out.labels[changed][order])
    assert np.array_equal(kept.model_labels[got], probs.argmax(1)[changed][order])
    again = marker(alice, x, Answers(probs.argmax(1), probs))
    assert np.array_equal(again.labels, out.labels) and len(store.marked(alice.id)) == len(changed)
    untouched = marker(bob, x, Answers(probs.argmax(1), probs))
    assert np.array_equal(untouched.labels, probs.argmax(1)) and len(store.marked(bob.id)) == 0
    with pytest.raises(ResponseStoreError):
        store.set_rate(bob, 0.9)


def test_served_answers_are_marked_consistently_and_recorded(serve_marked, victim, digits) -> None:
    x = digits.x_train[:800]
    model_labels = victim(__import__("torch").from_numpy(x)).argmax(1).numpy()
    from tracemark.package.licence import OutputPolicy

    with serve_marked(victim, marking_rate=0.05) as srv:
        alice, token = srv.add("alice", policy=OutputPolicy("probabilities"))
        _, bob_token = srv.add("bob")
        with httpx.Client(base_url=srv.url, timeout=10.0) as http:

            def ask(tok: str, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
                labels, probs = [], []
                for start in range(0, len(inputs), 64):
                    r = http.post("/v1/predict", json={"inputs": inputs[start:start + 64].tolist()},
                                  headers={"Authorization": f"Bearer {tok}"})
                    assert r.status_code == 200, r.text
                    labels += r.json()["labels"]
                    probs += r.json().get("probabilities", [])
                return np.array(labels), (np.array(probs) if probs else None)

            first, probs = ask(token, x)
            second, _ = ask(token, x[::-1].copy())
            bob_labels, _ = ask(bob_token, x)
        altered = np.flatnonzero(first != model_labels)
        assert 15 <= len(altered) <= 70  # Binomial(800, 0.05): mean 40
        assert np.array_equal(second[::-1], first)  # same input, same answer, whatever the order
        assert (probs.argmax(1) == first).all()
        kept = srv.responses.marked(alice.id)
        assert len(kept) == len(altered)
        assert set(kept.served_labels.tolist()) <= set(range(10)) and (kept.served_labels != kept.model_labels).all()
        assert set(np.flatnonzero(bob_labels != model_labels)) != set(altered)


def test_marked_answer_is_refused_when_its_evidence_cannot_be_kept(tmp_path: Path, monkeypatch) -> None:
    import sqlite3

    from tracemark.extraction import MarkingWriteError

    store = ResponseStore(tmp_path / "r.sqlite")
    marker = ResponseMarker(SECRET, store, rate=0.5, cap=None)

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "settle", broken)
    x = np.random.default_rng(3).random((8, 1, 8, 8), dtype=np.float32)
    probs = np.full((8, 10), 0.1)
    with pytest.raises(MarkingWriteError, match="not answered") as caught:
        marker(_client("alice"), x, Answers(probs.argmax(1), probs))
    assert caught.value.status == 503
