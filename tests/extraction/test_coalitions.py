"""Coalitions: a thief's several API keys named together from their pooled marks; honest clients never pulled in;
the family-wise error rate of the group search; and the monitor's coalition signal on honest and sybil traffic.

The digits setup marks answers with the real marker and store (no HTTP: test_clones.py covers the server) at a
1.25% rate, so each of three sybil keys draws only 4-6 marks — too few for any key alone at alpha 1e-6, as in the
MNIST benchmark's sybil thief at 5,000 queries — and trains MLP clones (a few seconds each).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import tracemark as tm
from tracemark.extraction import (AlertStore, MarkedSet, MarkingSecret, MonitorSettings, ResponseMarker, ResponseStore,
                                  StealingMonitor, check_clone)
from tracemark.extraction.clones import evidence
from tracemark.extraction.coalitions import find_coalition, pooled, sets_counted
from tracemark.extraction.errors import ExtractionError
from tracemark.serve.clients import Client
from tracemark.targets.base import Answers, Target

ALPHA = 1e-6
K = 10


@dataclass
class Setup:
    store: ResponseStore
    sybil_clone: nn.Module
    solo_clone: nn.Module
    independent: nn.Module


def _served(marker: ResponseMarker, victim: nn.Module, name: str, x: np.ndarray) -> np.ndarray:
    client = Client(f"c_{name}", name, "2026-01-01T00:00:00.000000Z")
    labels = []
    for start in range(0, len(x), 64):
        with torch.no_grad():
            probs = torch.softmax(victim(torch.from_numpy(x[start : start + 64])), 1).numpy().astype(np.float64)
        labels.append(marker(client, x[start : start + 64], Answers(probs.argmax(1), probs)).labels)
    return np.concatenate(labels)


def _mlp(x: np.ndarray, y: np.ndarray, seed: int, epochs: int = 40) -> nn.Module:
    model = tm.build_model("mlp", (1, 8, 8), K, seed=seed)
    tm.fit(model, tm.to_tensor_dataset(x, y), epochs=epochs, lr=5e-3, batch_size=128, seed=seed)
    return model.eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, victim: nn.Module, digits: tm.ImageData) -> Setup:
    store = ResponseStore(tmp_path_factory.mktemp("coalitions") / "responses.sqlite")
    marker = ResponseMarker(MarkingSecret(bytes(range(2, 34))), store, rate=0.0125, cap=None)
    x = digits.x_train
    thirds = np.array_split(np.arange(len(x)), 3)
    sybil = np.concatenate([_served(marker, victim, f"sybil{i}", x[part]) for i, part in enumerate(thirds)])
    _served(marker, victim, "honest", np.concatenate([digits.x_test, x]))  # never feeds a clone
    solo = _served(marker, victim, "solo", x)
    marker.close()
    return Setup(store, _mlp(x, sybil, 1), _mlp(x, solo, 2), _mlp(x, digits.y_train, 3, epochs=10))


def test_a_clone_through_three_keys_names_the_three_and_not_the_honest_client(setup: Setup) -> None:
    marks = {c.client_name: c.marked for c in setup.store.clients()}
    assert all(3 <= marks[f"sybil{i}"] <= 8 for i in range(3)) and marks["honest"] >= 15
    result = check_clone(setup.store, tm.TorchTarget(setup.sybil_clone), alpha=ALPHA)
    assert result.named_clients == [] and result.named is None  # no key alone clears alpha: the sybil thief
    assert result.outcome == "clone-of-coalition"
    coalition = result.coalition
    assert coalition is not None and coalition.named and coalition.p_adjusted <= ALPHA
    assert sorted(m.client_name for m in coalition.members) == ["sybil0", "sybil1", "sybil2"]
    assert coalition.marked == sum(marks[f"sybil{i}"] for i in range(3))
    assert all(ALPHA < m.p_adjusted <= 1e-3 for m in coalition.members)
    honest = next(c for c in result.clients if c.client_name == "honest")
    assert honest.p_adjusted > 1e-2
    text = str(result)
    assert "learned from clients sybil" in text and "honest p =" not in text
    doc = result.to_dict()
    assert doc["coalition"]["named"] and sorted(doc["coalition"]["client_names"]) == ["sybil0", "sybil1", "sybil2"]
    assert doc["coalition"]["sets_counted"] == sets_counted(5, 3) == 5 * 10


def test_a_clone_from_one_key_names_that_key_alone(setup: Setup) -> None:
    result = check_clone(setup.store, tm.TorchTarget(setup.solo_clone), alpha=ALPHA)
    assert result.outcome == "clone-of-client" and [c.client_name for c in result.named_clients] == ["solo"]
    assert result.coalition is not None and [m.client_name for m in result.coalition.members] == ["solo"]
    assert result.margin is not None and result.margin > 6


@pytest.mark.parametrize("who", ["independent", "victim"])
def test_models_that_never_saw_marked_answers_name_nobody(setup: Setup, victim: nn.Module, who: str) -> None:
    model = setup.independent if who == "independent" else victim
    result = check_clone(setup.store, tm.TorchTarget(model), alpha=ALPHA)
    assert result.outcome == "no-client-matches" and result.named_clients == []
    assert result.coalition is None or not result.coalition.named


def test_cli_prints_the_coalition_and_json_has_it(setup: Setup, tmp_path: Path) -> None:
    from tracemark.cli import build_app
    from tracemark.cli import responses as responses_cli

    app = build_app()
    if not any(getattr(g, "name", None) == "responses" for g in app.registered_groups):
        responses_cli.register(app)
    path = tm.save_model(setup.sybil_clone, tmp_path / "suspect.safetensors")
    args = ["responses", "check", "--model", str(path), "--responses-db", str(setup.store.path)]
    doc = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)
    assert doc["outcome"] == "clone-of-coalition" and doc["coalition"]["p_adjusted"] <= ALPHA
    assert sorted(doc["coalition"]["client_names"]) == ["sybil0", "sybil1", "sybil2"]
    text = CliRunner().invoke(app, args)
    assert text.exit_code == 0 and "learned from clients sybil" in text.output and "combined p" in text.output
    strict = json.loads(CliRunner().invoke(app, [*args, "--json", "--member-alpha", "1e-4"]).stdout)
    assert "sybil1" not in strict["coalition"]["client_names"]  # its own p (Bonferroni 7.6e-4) is above 1e-4
    clients_db = _client_store(tmp_path / "clients.sqlite", {"sybil0": "2026-02-01T10:00:00", "sybil1": "2026-02-01T10:00:05",
                                                             "sybil2": "2026-02-01T10:00:09", "honest": "2026-01-02T08:00:00",
                                                             "solo": "2026-01-20T12:00:00"})
    for extra in (["--group", "sybil0,sybil1,sybil2"], ["--groups-created-within", "60"]):
        doc = json.loads(CliRunner().invoke(app, [*args, "--json", "--member-alpha", "1e-4", "--clients-db", str(clients_db), *extra]).stdout)
        assert doc["coalition"]["given"] and doc["coalition"]["sets_counted"] == 2
        assert sorted(doc["coalition"]["client_names"]) == ["sybil0", "sybil1", "sybil2"]


def _client_store(path: Path, created: dict[str, str]) -> Path:
    """A client store holding the fixture's clients under their fixed ids (marks derive from the id), made at ``created``."""
    from tracemark.serve.clients import ClientStore

    ClientStore(path)
    with sqlite3.connect(path) as conn:
        for name, when in created.items():
            conn.execute("INSERT INTO clients (id, name, key_sha256, created) VALUES (?, ?, ?, ?)",
                         (f"c_{name}", name, f"unused-{name}", when + ".000000Z"))
    return path


# --- synthetic marked sets and suspects: the statistics, exactly and at scale --------------------------------------


class Table(Target):
    """A suspect whose scores for input ``i`` (encoded in the input's first value) are row ``i`` of a table."""

    def __init__(self, scores: np.ndarray, labels_only: bool = False) -> None:
        self.scores, self.labels_only, self.num_classes, self.description = scores, labels_only, K, "table"

    def _answer(self, x: np.ndarray) -> Answers:
        rows = self.scores[np.rint(x[:, 0, 0, 0]).astype(int)]
        return Answers(rows.argmax(1)) if self.labels_only else Answers(rows.argmax(1), rows)


def _world(rng: np.random.Generator, sizes: list[int], learned: list[float], labels_only: bool = False,
           model_bias: float = 1.0) -> tuple[list[MarkedSet], Table]:
    """Clients with ``sizes`` marks each; the suspect's scores are random, plus ``model_bias`` on the model's label, plus
    a boost of the served label on a ``learned`` share of each client's marks (0: it never saw that client)."""
    total = sum(sizes)
    scores = rng.random((total, K))
    sets, start = [], 0
    for i, (n, share) in enumerate(zip(sizes, learned)):
        rows = np.arange(start, start + n)
        model = rng.integers(0, K, n)
        served = (model + 1 + rng.integers(0, K - 1, n)) % K
        scores[rows, model] += model_bias
        hit = rows[rng.random(n) < share]
        scores[hit, served[hit - start]] += 3.0
        sets.append(MarkedSet(f"id{i}", f"c{i}", rows.astype(np.float32).reshape(n, 1, 1, 1), model, served, K))
        start += n
    return sets, Table(scores, labels_only)


def test_pooled_evidence_is_the_evidence_of_all_the_marks_together() -> None:
    rng = np.random.default_rng(0)
    for labels_only in (False, True):
        sets, suspect = _world(rng, [7, 11, 5], [0.5, 0.3, 0.0], labels_only, model_bias=0.3)
        each = [evidence(s, suspect.predict(s.inputs), 1) for s in sets]
        merged = MarkedSet("all", "all", np.concatenate([s.inputs for s in sets]), np.concatenate([s.model_labels for s in sets]),
                           np.concatenate([s.served_labels for s in sets]), K)
        together = evidence(merged, suspect.predict(merged.inputs), 1)
        statistic, marked, matches, trials, rank_sum, p = pooled(each)
        assert (statistic, marked, matches, trials, rank_sum) == (together.statistic, 23, together.matches, together.trials,
                                                                    together.rank_sum)
        assert p == pytest.approx(together.p_value, rel=1e-12)


def test_every_client_that_clears_alpha_is_named_not_one_of_several_equals() -> None:
    sets, suspect = _world(np.random.default_rng(1), [30, 30, 30, 25, 25], [1.0, 1.0, 1.0, 0.0, 0.0])
    result = check_clone(sets, suspect, alpha=ALPHA)
    assert result.outcome == "clone-of-client"
    assert [c.client_name for c in result.named_clients] == ["c0", "c1", "c2"]  # all three, equally strong
    assert [m.client_name for m in result.coalition.members] == ["c0", "c1", "c2"]
    assert result.margin is not None and result.margin > 20  # between the weakest named and the strongest honest
    assert "learned from clients c0" in str(result) and "c1 (p =" in str(result)
    assert [c["client_name"] for c in result.to_dict()["named_clients"]] == ["c0", "c1", "c2"]


@pytest.mark.parametrize("labels_only", [False, True])
@pytest.mark.parametrize("given", [False, True])
def test_family_wise_false_positive_rate_under_the_null_is_at_most_alpha(labels_only: bool, given: bool) -> None:
    """Independent suspects against six clients, with or without two groups given: naming anyone (alone or as a
    group) is a false positive. Guaranteed below 2 alpha (two families at alpha each); seen below alpha."""
    rng, alpha, trials, false = np.random.default_rng(2), 0.05, 600, 0
    groups = [["id0", "id1", "id2"], ["id3", "id4", "id5"]] if given else []
    for _ in range(trials):
        sizes = [int(n) for n in rng.integers(3, 30, 6)]
        sets, suspect = _world(rng, sizes, [0.0] * 6, labels_only, model_bias=0.5)
        result = check_clone(sets, suspect, alpha=alpha, groups=groups)
        false += result.outcome != "no-client-matches"
    print(f"{false} of {trials} independent suspects named someone at alpha {alpha}")
    # bounded check: 600 trials at rate 0.05 (alpha) exceed 45 with probability < 0.3%
    assert false <= 45, f"{false} of {trials} independent suspects named someone"


def test_a_group_given_in_advance_names_keys_too_weak_for_the_search() -> None:
    """Three keys with 5 marks each, 70% learned: the search cannot admit the weak keys (member alpha), but the group
    of keys made together, given without looking at the marks, is named whole; a given group of honest clients is not."""
    sets, suspect = _world(np.random.default_rng(5), [5, 5, 5, 20, 20, 20], [0.7, 0.7, 0.7, 0.0, 0.0, 0.0])
    searched = check_clone(sets, suspect, alpha=ALPHA)
    assert searched.outcome == "no-client-matches"
    given = check_clone(sets, suspect, alpha=ALPHA, groups=[["id0", "id1", "id2"], ["id3", "id4", "id5"]])
    assert given.outcome == "clone-of-coalition" and given.coalition.given and given.coalition.p_adjusted <= ALPHA
    assert sorted(m.client_name for m in given.coalition.members) == ["c0", "c1", "c2"]
    assert given.coalition.sets_counted == 4 and "given in advance" in str(given)
    honest = check_clone(sets, suspect, alpha=ALPHA, groups=[["id3", "id4", "id5"]])
    assert honest.outcome == "no-client-matches"


def test_groups_created_together_come_from_creation_times_only() -> None:
    from tracemark.extraction.coalitions import groups_created_together

    made = [("a", "2026-01-01T00:00:00.000000Z"), ("b", "2026-01-01T00:00:20.000000Z"), ("c", "2026-01-01T00:00:45.000000Z"),
            ("d", "2026-01-03T00:00:00.000000Z"), ("e", "2026-01-05T00:00:00.000000Z"), ("f", "2026-01-05T00:00:01.000000Z"),
            ("g", "not a time")]
    clients = [Client(f"c_{name}", name, when) for name, when in made]
    assert groups_created_together(clients, 30) == [["c_a", "c_b", "c_c"], ["c_e", "c_f"]]
    assert groups_created_together(clients, 10) == [["c_e", "c_f"]]
    with pytest.raises(ExtractionError, match="at least 0 seconds"):
        groups_created_together(clients, -1)


def test_an_honest_client_joins_a_coalition_at_most_at_the_member_level() -> None:
    """Three keys fed a clone (80% of their marks learned), three honest clients did not; the honest ones may only join
    when their own Bonferroni p clears member_alpha (here loosened to 0.05 to see it happen at all)."""
    rng, trials, joined, named = np.random.default_rng(3), 400, 0, 0
    for _ in range(trials):
        sizes = [int(n) for n in rng.integers(5, 12, 3)] + [int(n) for n in rng.integers(10, 30, 3)]
        sets, suspect = _world(rng, sizes, [0.8, 0.8, 0.8, 0.0, 0.0, 0.0])
        result = check_clone(sets, suspect, alpha=ALPHA, member_alpha=0.05)
        members = {m.client_name for m in result.coalition.members} if result.coalition and result.coalition.named else set()
        named += bool(members)
        joined += bool(members & {"c3", "c4", "c5"} or {c.client_name for c in result.named_clients} & {"c3", "c4", "c5"})
    assert named >= 0.6 * trials  # the sybil coalition is usually found
    print(f"coalition named {named}/{trials}, an honest client in it {joined}/{trials}")
    assert joined <= 0.05 * trials  # seen: about 2%


def test_levels_are_checked_before_the_suspect_is_asked() -> None:
    sets, suspect = _world(np.random.default_rng(4), [5], [0.0])
    with pytest.raises(ExtractionError, match="member alpha"):
        check_clone(sets, suspect, alpha=1e-3, member_alpha=1e-6)
    with pytest.raises(ExtractionError, match="at least one client"):
        check_clone(sets, suspect, max_coalition=0)
    ev = [evidence(sets[0], suspect.predict(sets[0].inputs), 1)]
    assert find_coalition(ev, ALPHA) is None or not find_coalition(ev, ALPHA).named


# --- the monitor's coalition signal ---------------------------------------------------------------------------------


def _client(name: str, created: str) -> Client:
    return Client(f"c_{name}", name, created)


def _feed(monitor: StealingMonitor, model: nn.Module, client: Client, x: np.ndarray) -> None:
    for start in range(0, len(x), 50):
        with torch.no_grad():
            probs = torch.softmax(model(torch.from_numpy(x[start : start + 50])), 1).numpy()
        monitor(client, x[start : start + 50], Answers(probs.argmax(1), probs))


def _natural(digits: tm.ImageData, n: int, seed: int) -> np.ndarray:
    pool = np.concatenate([digits.x_test, digits.x_train])
    return pool[np.random.default_rng(seed).integers(0, len(pool), n)]


ONLY_COALITION = dict(prada_delta=None, volume=None, coverage_tv=None, coalition_volume=3000)


def test_monitor_flags_keys_created_together_with_a_large_combined_volume(victim: nn.Module, digits: tm.ImageData,
                                                                          tmp_path: Path) -> None:
    store = AlertStore(str(tmp_path / "alerts.sqlite"))
    monitor = StealingMonitor(MonitorSettings(**ONLY_COALITION), store)
    for i in range(3):  # one thief's three keys, made a minute apart, 1,200 queries each: 3,600 together
        _feed(monitor, victim, _client(f"sybil{i}", f"2026-03-01T10:0{i}:00.000000Z"), _natural(digits, 1200, i))
    flagged = {a.client_name: a for a in monitor.raised}
    assert set(flagged) == {"sybil0", "sybil1", "sybil2"} and all(a.signal == "coalition" for a in flagged.values())
    assert set(flagged["sybil2"].group.split(",")) == {"sybil0", "sybil1", "sybil2"}
    assert all(a.value > a.threshold == 3000 for a in flagged.values())
    assert [a.group for a in store.list("c_sybil0")] == [flagged["sybil0"].group]
    assert f"coalition with group {flagged['sybil1'].group} after" in str(flagged["sybil1"])


def test_monitor_false_alarm_rate_on_honest_traffic(victim: nn.Module, digits: tm.ImageData) -> None:
    """Forty honest clients querying natural images (200-2,500 each), created at random times over 30 days, two of them
    by one team in the same minute: no coalition alert. Keys made together with unlike query mixes are not a group."""
    monitor = StealingMonitor(MonitorSettings(**ONLY_COALITION))
    rng = np.random.default_rng(5)
    starts, volumes = np.sort(rng.uniform(0, 30 * 86_400, 40)), rng.integers(200, 2500, 40)
    starts[1], volumes[:2] = starts[0] + 60, 600  # the team's two keys, a minute apart
    for i, (t, n) in enumerate(zip(starts, volumes)):
        created = np.datetime_as_string(np.datetime64("2026-03-01T00:00:00") + np.timedelta64(int(t), "s")) + ".000000Z"
        _feed(monitor, victim, _client(f"honest{i}", created), _natural(digits, int(n), 10 + i))
    assert [a for a in monitor.raised if a.signal == "coalition"] == []  # 0 of 40 honest clients
    low = digits.x_train[np.isin(digits.y_train, [0, 1, 2, 3, 4])][:1000]
    high = digits.x_train[np.isin(digits.y_train, [5, 6, 7, 8, 9])][:1000]
    for name, x in (("low", low), ("high", high)):  # 2,000 together but the class mixes are far apart (TV ~ 1)
        _feed(monitor, victim, _client(name, "2026-06-01T00:00:00.000000Z"), np.concatenate([x, x]))
    assert not [a for a in monitor.raised if a.client_name in ("low", "high") and a.signal == "coalition"]


def test_alert_table_from_before_coalitions_gains_the_group_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE extraction_alerts (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, client_id TEXT NOT NULL,"
                     " client_name TEXT NOT NULL, signal TEXT NOT NULL, queries INTEGER NOT NULL, value REAL NOT NULL,"
                     " threshold REAL NOT NULL, ledger_seq INTEGER)")
        conn.execute("INSERT INTO extraction_alerts (time, client_id, client_name, signal, queries, value, threshold)"
                     " VALUES ('t', 'c_a', 'a', 'volume', 10, 11.0, 10.0)")
    store = AlertStore(str(path))
    assert [(a.signal, a.group) for a in store.list()] == [("volume", None)]
