"""Clone attribution end to end: ART's attacks steal a marked digits model through the real server on
loopback; each clone is traced to the client whose answers it learned from, and nothing else is.

Digits-sized budgets: 1,000 queries per thief and a 5% marking rate (about 50 marked answers each);
the MNIST benchmark (bench/extraction.py) measures the default rate and marking profile at 1,000-20,000 queries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import tracemark as tm
from tests.servers import prediction_app, serve_app
from tracemark.attacks import ArtExtract, ThiefData
from tracemark.extraction import MarkingSecret, NoMarkedResponsesError, ResponseStore, check_clone
from tracemark.package.licence import OutputPolicy
from tracemark.serve import ClientStore, ServeConfig, create_app, from_module
from tracemark.targets.http import HttpTarget

ALPHA = 1e-6


@dataclass
class Stolen:
    store: ResponseStore
    ids: dict[str, str]
    clones: dict[str, nn.Module]
    independent: nn.Module
    accuracy: dict[str, float]
    queries: dict[str, int]


@pytest.fixture(scope="module")
def stolen(tmp_path_factory: pytest.TempPathFactory, victim: nn.Module, digits: tm.ImageData) -> Stolen:
    root = tmp_path_factory.mktemp("stolen")
    secret = MarkingSecret(bytes(range(1, 33))).save(root / "marking.secret")
    config = ServeConfig(model="in-memory", clients_db=str(root / "clients.sqlite"), audit_db=str(root / "audit.sqlite"),
                         responses_db=str(root / "responses.sqlite"), marking=True, marking_secret=str(secret),
                         marking_rate=0.05, marking_cap=0.5, rate=1e6, burst=1e6)
    clients = ClientStore(config.clients_db)
    alice = clients.add("alice")
    bob = clients.add("bob", policy=OutputPolicy("probabilities"))
    clones, queries = {}, {}
    with serve_app(create_app(from_module(victim, "digits-cnn"), config)) as url:
        # overlapping pools: 563 images are asked by both thieves
        for issued, attack, pool, seed in [
            (alice, ArtExtract("copycat", n_queries=1000, output="label", arch="small_cnn", epochs=100), digits.x_train[:1000], 1),
            (bob, ArtExtract("knockoff", n_queries=1000, output="probabilities", arch="small_cnn", epochs=100), digits.x_train[437:], 2),
        ]:
            fields = {"probabilities_field": "probabilities"} if attack.output == "probabilities" else {}
            target = HttpTarget(f"{url}/v1/predict", api_key=issued.token, batch_size=64, num_classes=10, timeout=10.0, **fields)
            result = attack.run(target, ThiefData(pool, seed=seed))
            clones[issued.client.name], queries[issued.client.name] = result.model, result.info["queries"]
    independent = tm.build_model("lenet", digits.input_shape, 10, seed=7)
    tm.fit(independent, tm.to_tensor_dataset(digits.x_train, digits.y_train), epochs=100, seed=7)
    accuracy = {name: tm.accuracy(m, digits.x_test, digits.y_test) for name, m in clones.items()}
    return Stolen(ResponseStore(config.responses_db), {"alice": alice.client.id, "bob": bob.client.id}, clones,
                  independent.eval(), accuracy, queries)


def test_art_clones_through_the_api_are_accurate(stolen: Stolen, victim: nn.Module, digits: tm.ImageData) -> None:
    assert stolen.queries == {"alice": 1000, "bob": 1000}
    victim_accuracy = tm.accuracy(victim, digits.x_test, digits.y_test)
    assert min(stolen.accuracy.values()) >= victim_accuracy - 0.08


@pytest.mark.parametrize("thief", ["alice", "bob"])
def test_each_clone_is_traced_to_its_own_client(stolen: Stolen, thief: str) -> None:
    result = check_clone(stolen.store, tm.TorchTarget(stolen.clones[thief]), alpha=ALPHA)
    assert result.outcome == "clone-of-client" and result.named is not None
    assert result.named.client_name == thief and result.named.p_adjusted <= ALPHA
    assert result.named.statistic == "rank" and result.named.rank_sum is not None
    other = result.clients[1]
    assert other.client_name != thief and other.p_adjusted > 1e-3 and result.margin > 3


@pytest.mark.parametrize("suspect", ["independent", "victim"])
def test_models_that_never_saw_marked_answers_match_no_client(stolen: Stolen, victim: nn.Module, suspect: str) -> None:
    model = stolen.independent if suspect == "independent" else victim
    result = check_clone(stolen.store, tm.TorchTarget(model), alpha=ALPHA)
    assert result.outcome == "no-client-matches" and result.named is None
    assert all(c.p_adjusted > 1e-3 for c in result.clients)


def test_label_only_suspect_api_is_traced_with_the_label_test(stolen: Stolen) -> None:
    clone = stolen.clones["alice"]
    app = prediction_app(lambda x: clone(torch.from_numpy(x)).detach().numpy(), num_classes=10)
    with serve_app(app) as url, HttpTarget(f"{url}/predict", response_field="labels", timeout=10.0) as target:
        result = check_clone(stolen.store, target, alpha=ALPHA)
    assert result.named is not None and result.named.client_name == "alice" and result.named.statistic == "label"
    assert result.named.p_adjusted <= ALPHA
    assert result.clients[1].p_adjusted > 1e-3


def test_cli_check_names_the_client_of_a_clone_file(stolen: Stolen, tmp_path: Path) -> None:
    from tracemark.cli import build_app
    from tracemark.cli import responses as responses_cli

    app = build_app()
    if not any(getattr(g, "name", None) == "responses" for g in app.registered_groups):
        responses_cli.register(app)
    path = tm.save_model(stolen.clones["bob"], tmp_path / "suspect.safetensors")
    result = CliRunner().invoke(app, ["responses", "check", "--model", str(path), "--responses-db", str(stolen.store.path), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["outcome"] == "clone-of-client" and doc["named"]["client_name"] == "bob" and doc["named"]["p_adjusted"] <= ALPHA
    listed = CliRunner().invoke(app, ["responses", "list", "--responses-db", str(stolen.store.path), "--json"])
    counts = {i["client_name"]: i["marked"] for i in json.loads(listed.stdout)["items"]}
    assert set(counts) == {"alice", "bob"} and all(20 <= n <= 90 for n in counts.values())


def test_empty_store_is_a_named_error(tmp_path: Path, victim: nn.Module) -> None:
    with pytest.raises(NoMarkedResponsesError):
        check_clone(ResponseStore(tmp_path / "empty.sqlite"), tm.TorchTarget(victim))



def test_exported_evidence_checks_offline_like_the_store(stolen: Stolen, tmp_path: Path) -> None:
    from tracemark.extraction.store import load_export

    made = stolen.store.export(tmp_path / "evidence.json")
    assert made.clients == 2 and (tmp_path / "evidence.json").stat().st_mode & 0o777 == 0o600
    suspect = tm.TorchTarget(stolen.clones["alice"])
    live, offline = check_clone(stolen.store, suspect), check_clone(load_export(made.path), suspect)
    assert offline.to_dict() == live.to_dict() and offline.named.client_name == "alice"
    only_bob = check_clone(load_export(made.path), suspect, clients=[stolen.ids["bob"]])
    assert only_bob.outcome == "no-client-matches"
