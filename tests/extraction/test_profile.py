"""Where marks go (the marking profile) and the exact rank test of clone attribution."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

import tracemark as tm
from tracemark.extraction import MarkingProfileError, MarkingSecret, ResponseMarker, ResponseStore
from tracemark.extraction.clones import rank_sum_pvalue, served_label_ranks
from tracemark.extraction.profile import MarkingProfile
from tracemark.serve.clients import Client
from tracemark.targets.base import Answers


def _null_cdf(total: int, n: int, k: int) -> float:
    pmf = np.array([1.0])
    for _ in range(n):
        pmf = np.convolve(pmf, np.full(k - 1, 1.0 / (k - 1)))
    return float(pmf[: total + 1].sum())


@pytest.mark.parametrize(("n", "k"), [(1, 10), (7, 10), (25, 10), (40, 3), (12, 2)])
def test_rank_sum_pvalue_is_the_exact_null_tail(n: int, k: int) -> None:
    for total in sorted({0, 1, n, 2 * n, n * (k - 2) // 2, max(0, n * (k - 2) - 1), n * (k - 2)}):
        assert rank_sum_pvalue(total, n, k) == pytest.approx(_null_cdf(total, n, k), rel=1e-12, abs=1e-300)
    assert rank_sum_pvalue(0, 0, 10) == 1.0


def test_rank_test_holds_its_level_when_the_served_labels_are_unknown_to_the_suspect() -> None:
    rng = np.random.default_rng(0)
    p = []
    for _ in range(2000):
        scores = rng.random((20, 10))
        v = rng.integers(0, 10, 20)
        w = (v + 1 + rng.integers(0, 9, 20)) % 10
        p.append(rank_sum_pvalue(int(served_label_ranks(scores, v, w).sum()), 20, 10))
    assert np.mean(np.array(p) <= 0.05) <= 0.065 and np.mean(np.array(p) <= 0.01) <= 0.016


def test_served_label_ranks_skip_the_model_label_and_count_ties_against() -> None:
    scores = np.array([[0.5, 0.3, 0.2, 0.0], [0.1, 0.4, 0.4, 0.1], [0.7, 0.1, 0.1, 0.1]])
    assert served_label_ranks(scores, np.array([0, 0, 0]), np.array([1, 2, 3])).tolist() == [0, 1, 2]


@pytest.fixture(scope="module")
def profile(digits: tm.ImageData) -> MarkingProfile:
    return MarkingProfile.calibrate(digits.x_train, unusual_share=0.05, boost=20, components=10, seed=0)


def test_calibration_is_seeded_and_calls_about_the_share_of_new_in_distribution_inputs_unusual(
        profile: MarkingProfile, digits: tm.ImageData) -> None:
    again = MarkingProfile.calibrate(digits.x_train, unusual_share=0.05, boost=20, components=10, seed=0)
    assert again.sha256 == profile.sha256 != MarkingProfile.calibrate(digits.x_train, unusual_share=0.05, components=10, seed=1).sha256
    assert MarkingProfile.from_dict(profile.to_dict()).sha256 == profile.sha256
    unusual_test = np.mean(profile.scores(digits.x_test) > profile.threshold)
    assert 0.01 <= unusual_test <= 0.12  # held-out digits: about the calibrated 5%
    noise = np.random.default_rng(0).random((300, *digits.input_shape), dtype=np.float32)
    assert np.mean(profile.scores(noise) > profile.threshold) > 0.95
    rate = 0.003
    assert 0.95 * profile.typical_rate(rate) + 0.05 * profile.unusual_rate(rate) == pytest.approx(rate)
    assert profile.unusual_rate(rate) == pytest.approx(20 * profile.typical_rate(rate))
    below_grid = digits.x_test + np.random.default_rng(1).uniform(-0.4 / 255, 0.4 / 255, digits.x_test.shape).astype(np.float32)
    assert np.array_equal(profile.rates(below_grid, rate), profile.rates(digits.x_test, rate))
    with pytest.raises(MarkingProfileError, match="shape"):
        profile.scores(np.zeros((2, 1, 28, 28), np.float32))
    with pytest.raises(MarkingProfileError, match="at least"):
        MarkingProfile.calibrate(digits.x_train[:150])
    with pytest.raises(MarkingProfileError, match="boost"):
        MarkingProfile.calibrate(digits.x_train, boost=0.5)


def test_served_marks_concentrate_on_unusual_inputs(serve_marked, victim, digits: tm.ImageData, profile: MarkingProfile) -> None:
    noise = np.random.default_rng(2).random((600, *digits.input_shape), dtype=np.float32)
    natural = digits.x_test[:360]
    with serve_marked(victim, marking_rate=0.02) as srv:
        srv.responses.set_profile(profile)
    with serve_marked(victim, marking_rate=0.02) as srv:  # a server loads the store's profile when it starts
        _, honest = srv.add("honest")
        thief, token = srv.add("thief")
        with httpx.Client(base_url=srv.url, timeout=10.0) as http:
            def ask(tok: str, x: np.ndarray) -> np.ndarray:
                labels: list[int] = []
                for start in range(0, len(x), 64):
                    r = http.post("/v1/predict", json={"inputs": x[start:start + 64].tolist()}, headers={"Authorization": f"Bearer {tok}"})
                    assert r.status_code == 200, r.text
                    labels += r.json()["labels"]
                return np.array(labels)

            first = ask(token, noise)
            assert np.array_equal(ask(token, noise), first)  # same input, same answer
            ask(honest, natural)
        thief_marks = len(srv.responses.marked(thief.id))
        honest_marks = len(srv.responses.marked(srv.clients.get("honest").id))
    # noise is unusual: rate 0.02 / (1 + 0.05 * 19) * 20 = 0.205, mean 123 of 600; digits: about 0.02, mean 7 of 360
    assert 80 <= thief_marks <= 170 and honest_marks <= 20


def test_marker_without_a_matching_profile_refuses_clearly(tmp_path, profile: MarkingProfile) -> None:
    marker = ResponseMarker(MarkingSecret(bytes(range(32))), ResponseStore(tmp_path / "r.sqlite"), rate=0.1, profile=profile)
    x = np.zeros((4, 1, 28, 28), np.float32)
    probs = np.full((4, 10), 0.1)
    with pytest.raises(MarkingProfileError, match="recalibrate") as caught:
        marker(Client("c_a", "a", ""), x, Answers(probs.argmax(1), probs))
    assert caught.value.status == 500
