"""Label-only evidence: region marks make an out-of-domain clone's labels carry its client's marks, at no extra honest cost.

Digits-sized: the victim is the digits CNN, the thief asks 4,000 out-of-domain images (rotated, transposed and blended
digits) and trains a clone on the served labels alone; the check sees only the suspect's labels. bench/extraction.py
``--label-only`` measures the MNIST / Fashion-MNIST case at the default rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tracemark as tm
from tracemark.extraction import MarkingSecret, ResponseStore, check_clone
from tracemark.extraction.clones import evidence, marked_units
from tracemark.extraction.marking import ResponseMarker, cells, decide_region
from tracemark.extraction.profile import MarkingProfile
from tracemark.extraction.store import MarkedSet
from tracemark.serve.clients import Client
from tracemark.targets.base import Answers, Target

THIEF_RATE = 0.05
"""The thief's server marks at 5% (unusual inputs then at the 50% maximum): digits has only ~140 regions to mark. (Against
per-input marks the same clone reproduces about 30 of 480 marks and is not named: bench/extraction.py --label-only.)"""


class LabelsOnly(Target):
    """A suspect seen through a label-only API."""

    def __init__(self, model: nn.Module) -> None:
        self.inner, self.description, self.num_classes = tm.TorchTarget(model), "labels only", 10

    def _answer(self, x: np.ndarray) -> Answers:
        return Answers(self.inner.predict(x).labels)


def _serve(marker: ResponseMarker, victim: nn.Module, client: Client, x: np.ndarray) -> np.ndarray:
    """The victim's answers to ``x`` through the marker, in requests of 64, as a server gives them."""
    labels = []
    for start in range(0, len(x), 64):
        with torch.no_grad():
            probs = torch.softmax(victim(torch.from_numpy(x[start:start + 64])), 1).numpy()
        labels.append(marker(client, x[start:start + 64], Answers(probs.argmax(1), probs)).labels)
    return np.concatenate(labels)


def _out_of_domain(digits: tm.ImageData, n: int = 4000) -> np.ndarray:
    rng = np.random.default_rng(0)
    a, b = (digits.x_train[rng.integers(0, len(digits.x_train), n)] for _ in range(2))
    q = n // 4
    x = np.concatenate([np.rot90(a[:q], 1, (2, 3)), np.rot90(a[q:2 * q], 2, (2, 3)), np.swapaxes(a[2 * q:3 * q], 2, 3),
                        0.5 * a[3 * q:] + 0.5 * b[3 * q:]])
    return (np.rint(x * 255) / 255).astype(np.float32)


@dataclass
class World:
    store: ResponseStore
    clone: nn.Module
    independent: nn.Module


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, victim: nn.Module, digits: tm.ImageData) -> World:
    """A store with region marks, the label-only clone of its out-of-domain thief, and an independent digits model."""
    ood = _out_of_domain(digits)
    store = ResponseStore(tmp_path_factory.mktemp("label-only") / "responses.sqlite")
    profile = MarkingProfile.calibrate(digits.x_train, seed=0)
    marker = ResponseMarker(MarkingSecret(bytes(range(32))), store, rate=THIEF_RATE, profile=profile)
    served = _serve(marker, victim, Client("c_thief", "thief", ""), ood)
    _serve(marker, victim, Client("c_honest", "honest", ""), digits.x_test)
    clone = tm.build_model("small_cnn", digits.input_shape, 10, seed=1)
    tm.fit(clone, tm.to_tensor_dataset(ood, served), epochs=10, seed=1)
    independent = tm.build_model("small_cnn", digits.input_shape, 10, seed=2)
    tm.fit(independent, tm.to_tensor_dataset(digits.x_train, digits.y_train), epochs=5, seed=2)
    return World(store, clone.eval(), independent.eval())


def test_honest_in_domain_answers_are_altered_at_most_half_a_percent_with_region_marks(victim: nn.Module, digits: tm.ImageData,
                                                                                     tmp_path: Path) -> None:
    profile = MarkingProfile.calibrate(digits.x_train, seed=0)  # defaults: rate 0.5%, cap 0.5%, region marks
    assert profile.region_marks
    marker = ResponseMarker(MarkingSecret(bytes(range(32))), ResponseStore(tmp_path / "r.sqlite"), profile=profile)
    rng = np.random.default_rng(0)  # 4 × the 360 held-out digits, with noise above the grid: 1,440 distinct inputs
    x = np.concatenate([np.clip(digits.x_test + rng.normal(0, 0.02, digits.x_test.shape), 0, 1) for _ in range(4)]).astype(np.float32)
    y = np.tile(digits.y_test, 4)
    served = _serve(marker, victim, Client("c_honest", "honest", ""), x)
    with torch.no_grad():
        own = victim(torch.from_numpy(x)).argmax(1).numpy()
    assert 0 < (served != own).sum() <= 0.005 * len(x)
    assert (own == y).mean() - (served == y).mean() <= 0.005


def test_region_marks_give_every_unusual_input_of_a_region_the_same_label(world: World) -> None:
    marked = world.store.marked("c_thief")
    unit, firsts = marked_units(marked)
    assert len(firsts) < len(marked) / 5  # the marks come in regions
    for u in range(len(firsts)):
        if (unit == u).sum() >= 5:
            assert len(set(marked.served_labels[unit == u].tolist())) <= 2  # a region's label (and rare per-input marks)


def test_label_only_out_of_domain_clone_is_named_from_its_labels_with_region_marks(world: World) -> None:
    result = check_clone(world.store, LabelsOnly(world.clone), alpha=1e-6)
    assert [c.client_name for c in result.named_clients] == ["thief"]
    thief = result.named
    assert thief is not None and thief.statistic == "label" and thief.label_matches > thief.marked / 3


def test_independent_model_is_not_named_from_its_labels(world: World) -> None:
    result = check_clone(world.store, LabelsOnly(world.independent), alpha=1e-4)
    assert result.outcome == "no-client-matches"
    assert min(c.p_value for c in result.clients) > 1e-2


def test_a_region_counts_once_so_a_suspect_that_repeats_one_label_is_not_accused() -> None:
    # 60 inputs of one region, all served label 3 (region marks); a suspect that answers 3 everywhere
    # agrees with 60 of 60 — one draw of chance 1/9 (the unit's count of 3s, 60, against eight zeros), not 60 trials
    rng = np.random.default_rng(0)
    base = np.zeros((1, 1, 8, 8), np.float32)
    base[..., :4, :4] = 1.0
    x = np.clip(base + rng.uniform(0, 0.05, (60, 1, 8, 8)), 0, 1).astype(np.float32)
    assert len(set(cells(x).tolist())) == 1
    marked = MarkedSet("c", "c", x, np.zeros(60, np.int64), np.full(60, 3), 10)
    e = evidence(marked, Answers(np.full(60, 3)), 1)
    assert (e.units, e.matches, e.trials, e.label_matches, e.unit_wins) == (1, 60, 60, 60, 1)
    assert e.p_value == pytest.approx(2 / 9)  # one draw of 1/9 under either statistic, doubled for using the better one


def test_the_per_unit_plurality_null_is_exact_for_suspects_that_never_saw_the_marks() -> None:
    """Units of very different sizes, a suspect with its own label habits per unit, served labels drawn off the model's
    label independently of it: the plurality statistic's p-value is uniform (its tail rate is at most the level), and a
    clone that wins most small units is strong evidence even when a big unit goes against it."""
    from tracemark.extraction.clones import agreement_pvalue, plurality_counts

    rng = np.random.default_rng(7)
    k, p_values = 10, []
    for _ in range(3000):
        sizes = rng.integers(1, 40, size=25)
        model = rng.integers(0, k, size=25)
        counts = np.stack([np.bincount(rng.choice(k, size=n, p=rng.dirichlet(np.full(k, 0.3))), minlength=k) for n in sizes])
        served = (model + rng.integers(1, k, size=25)) % k
        table = plurality_counts(counts, model)
        off = [np.delete(row, v).max() > 0 for row, v in zip(counts, model)]
        wins = sum(int(row[w] == np.delete(row, v).max()) for row, v, w, o in zip(counts, model, served, off) if o)
        p_values.append(agreement_pvalue(wins, table))
    p_values = np.array(p_values)
    for level in (0.01, 0.05, 0.2):
        assert (p_values <= level).mean() <= level + 0.015, level  # discrete, so at most the level (plus noise)
    assert (p_values <= 0.2).mean() > 0.05  # and not degenerate
    # 20 small units the clone learned and one large unit of 200 inputs it answers with another label
    counts = np.zeros((21, k), np.int64)
    counts[:20, 5] = 3
    counts[20, 2] = 200
    model, served = np.zeros(21, np.int64), np.array([5] * 20 + [7])
    table = plurality_counts(counts, model)
    assert agreement_pvalue(20, table) == pytest.approx((1 / 9) ** 20 * (1 + 20 * 8 / 9), rel=1e-6)


def test_region_decision_is_keyed_per_client_and_never_the_model_label() -> None:
    a, b = MarkingSecret(bytes(range(32))).client_key("a"), MarkingSecret(bytes(range(32))).client_key("b")
    drawn = [decide_region(a, cell, 4, 0.1, 10) for cell in range(2000)]
    assert 150 <= sum(d.marked for d in drawn) <= 250
    assert {(4 + 1 + d.offset) % 10 for d in drawn} == set(range(10)) - {4}
    assert drawn[:50] != [decide_region(b, cell, 4, 0.1, 10) for cell in range(50)]
    assert decide_region(a, 7, 4, 0.1, 10) == decide_region(a, 7, 4, 0.1, 10)
