"""The stealing monitor: PRADA, volume and class-coverage alerts, their store and ledger entries, throttling over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from tracemark.extraction import AlertStore, MonitorConfigError, MonitorSettings, StealingMonitor
from tracemark.serve.clients import Client
from tracemark.targets.base import Answers

OFF = dict(prada_delta=None, volume=None, coverage_tv=None)


def _feed(monitor: StealingMonitor, model: nn.Module, client: Client, x: np.ndarray, batch: int = 32) -> None:
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        with torch.no_grad():
            probs = torch.softmax(model(torch.from_numpy(chunk)), 1).numpy()
        monitor(client, chunk, Answers(probs.argmax(1), probs))


def _client(name: str) -> Client:
    return Client(f"c_{name}", name, "2026-01-01T00:00:00.000000Z")


def _synthetic(seeds: np.ndarray, n: int, step: float, seed: int) -> np.ndarray:
    """A JBDA-like stream: a few seed images, then rounds of small signed steps away from them."""
    rng, rounds, current = np.random.default_rng(seed), [seeds], seeds
    while sum(len(r) for r in rounds) < n:
        current = np.clip(current + step * np.sign(rng.standard_normal(current.shape)), 0, 1).astype(np.float32)
        rounds.append(current)
    return np.concatenate(rounds)[:n]


def test_prada_flags_synthetic_queries_but_not_natural_ones(victim: nn.Module, digits) -> None:
    monitor = StealingMonitor(MonitorSettings(volume=None, coverage_tv=None))
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(digits.x_train))
        _feed(monitor, victim, _client(f"honest{seed}"), digits.x_train[order])
    _feed(monitor, victim, _client("thief"), _synthetic(digits.x_test[:20], 1400, 0.05, 0))
    flagged = {(a.client_name, a.signal) for a in monitor.raised}
    assert flagged == {("thief", "prada")}
    alert = monitor.raised[0]
    assert alert.value < alert.threshold == 0.90 and 200 <= alert.queries <= 1400


def test_repeated_inputs_add_no_prada_distance(victim: nn.Module, digits) -> None:
    once, twice = (StealingMonitor(MonitorSettings(volume=None, coverage_tv=None)) for _ in range(2))
    x = digits.x_train[:640]
    _feed(once, victim, _client("a"), x)
    for start in range(0, len(x), 32):  # every batch retried, and the whole stream asked again at the end
        _feed(twice, victim, _client("a"), np.concatenate([x[start : start + 32]] * 2))
    _feed(twice, victim, _client("a"), x)
    assert list(twice.state("c_a").distances) == list(once.state("c_a").distances)
    assert twice.state("c_a").queries == 3 * len(x) and not twice.raised


def test_volume_alert_fires_once_when_the_daily_volume_is_exceeded(victim: nn.Module, digits, tmp_path: Path) -> None:
    now = [1000.0]
    store = AlertStore(str(tmp_path / "audit.sqlite"))
    monitor = StealingMonitor(MonitorSettings(**{**OFF, "volume": 100, "volume_window_s": 60.0}), store, clock=lambda: now[0])
    client = _client("busy")
    _feed(monitor, victim, client, digits.x_train[:96])  # 96 queries: under
    assert monitor.raised == []
    now[0] += 61.0  # the window has passed: old queries no longer count
    _feed(monitor, victim, client, digits.x_train[:96])
    assert monitor.raised == []
    _feed(monitor, victim, client, digits.x_train[96:160])  # 160 within the minute
    assert [(a.signal, a.queries, a.value) for a in monitor.raised] == [("volume", 224, 128.0)]
    _feed(monitor, victim, client, digits.x_train[160:400])
    assert len(monitor.raised) == 1
    assert store.list() == monitor.raised and store.list("c_other") == []


def test_coverage_alert_for_a_client_asking_one_class(victim: nn.Module, digits) -> None:
    monitor = StealingMonitor(MonitorSettings(**{**OFF, "coverage_tv": 0.5, "coverage_min_queries": 100}))
    _feed(monitor, victim, _client("honest"), digits.x_train[:600])
    _feed(monitor, victim, _client("narrow"), digits.x_train[digits.y_train < 3][:300])
    assert [(a.client_name, a.signal) for a in monitor.raised] == [("narrow", "coverage")]
    assert monitor.raised[0].queries == 128 and monitor.raised[0].value > 0.6


def test_settings_are_checked() -> None:
    for bad in ({"prada_delta": 1.5}, {"coverage_tv": 0.0}, {"prada_window": 6000}, {"volume": 0}, {"throttle_rate": -1.0},
                {"prior": (0.5, 0.6)}):
        with pytest.raises(MonitorConfigError):
            MonitorSettings(**bad)
    settings = MonitorSettings(prior=(0.5, 0.5), throttle_rate=2.0)
    assert MonitorSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings


def test_alerts_reach_the_ledger(victim: nn.Module, digits, tmp_path: Path) -> None:
    from tracemark.ledger import Ledger, OwnerIdentity

    ledger = Ledger.init(tmp_path / "ledger", OwnerIdentity.generate())
    monitor = StealingMonitor(MonitorSettings(**{**OFF, "volume": 50}), ledger=ledger)
    _feed(monitor, victim, _client("busy"), digits.x_train[:64])
    entry = ledger.entries()[-1]
    assert entry.event == "extraction-alert" and entry.payload["client_name"] == "busy" and entry.payload["signal"] == "volume"
    assert monitor.raised[0].ledger_seq == entry.seq


def test_flagged_client_is_throttled_over_http_and_alert_listed(serve_marked, victim, digits, tmp_path: Path) -> None:
    settings = MonitorSettings(**{**OFF, "volume": 100, "throttle_rate": 0.5, "throttle_burst": 40})
    with serve_marked(victim, monitor=settings) as srv:
        _, token = srv.add("greedy")
        _, honest = srv.add("honest")
        with httpx.Client(base_url=srv.url, timeout=10.0) as http:
            def post(tok: str, x: np.ndarray) -> httpx.Response:
                return http.post("/v1/predict", json={"inputs": x.tolist()}, headers={"Authorization": f"Bearer {tok}"})

            statuses = [post(token, digits.x_train[i * 32:(i + 1) * 32]).status_code for i in range(4)]
            assert statuses == [200, 200, 200, 200]  # the 4th request crosses 100 queries and raises the alert
            assert post(token, digits.x_train[200:232]).status_code == 200  # within the throttle's burst of 40
            refused = post(token, digits.x_train[232:264])
            assert refused.status_code == 429 and "throttled" in refused.json()["detail"] and int(refused.headers["Retry-After"]) >= 1
            assert post(honest, digits.x_train[:32]).status_code == 200
    from tracemark.cli import build_app
    from tracemark.cli import responses as responses_cli

    app = build_app()
    if not any(getattr(g, "name", None) == "responses" for g in app.registered_groups):
        responses_cli.register(app)
    out = CliRunner().invoke(app, ["responses", "alerts", "--audit-db", srv.config.audit_db, "--json"])
    assert out.exit_code == 0, out.output
    items = json.loads(out.stdout)["items"]
    assert [(i["client_name"], i["signal"], i["queries"]) for i in items] == [("greedy", "volume", 128)]



def test_throttled_requests_are_refused_before_the_model_runs(victim, digits, tmp_path: Path) -> None:
    from tracemark.extraction import ThrottledError
    from tracemark.serve import ClientStore, ServeConfig, create_app
    from tracemark.serve.model import from_module

    served = from_module(victim, input_shape=digits.input_shape)
    forward_passes = [0]
    scorer = served.scorer

    def counting(x: np.ndarray) -> np.ndarray:
        forward_passes[0] += 1
        return scorer(x)

    served.scorer = counting
    config = ServeConfig(model="m", clients_db=str(tmp_path / "c.sqlite"), audit_db=str(tmp_path / "a.sqlite"), rate=1e9, burst=1e9)
    monitor = StealingMonitor(MonitorSettings(**{**OFF, "volume": 40, "throttle_rate": 0.01, "throttle_burst": 32}))
    server = create_app(served, config, clients=ClientStore(tmp_path / "c.sqlite"), hook=monitor).state.server
    client = server.clients.add("greedy").client
    x = digits.x_train[:32].astype(np.float32)
    server.answer(client, x)
    server.answer(client, x)  # crosses 40 queries: the alert is raised, the answer still goes out
    assert monitor.raised and forward_passes[0] == 2
    server.answer(client, x)  # within the throttle's burst of 32
    assert forward_passes[0] == 3
    with pytest.raises(ThrottledError):
        server.answer(client, x)
    assert forward_passes[0] == 3, "a throttled request must not run the model"
