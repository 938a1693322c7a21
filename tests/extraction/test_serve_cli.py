"""End to end: `tracemark serve --marking --monitor` as a real process with two workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import torch

import tracemark as tm
from tests.servers import free_port
from tests.serve.test_serve_e2e import LAUNCH, _wait_ready
from tracemark.extraction import AlertStore, MarkingSecret, ResponseStore
from tracemark.serve import ClientStore


def test_marking_and_monitor_across_two_workers(tmp_path: Path, victim, digits) -> None:
    model = tm.save_model(victim, tmp_path / "victim.safetensors")
    secret = MarkingSecret.generate().save(tmp_path / "marking.secret")
    clients = ClientStore(tmp_path / "clients.sqlite")
    issued = clients.add("alice")
    port = free_port()
    env = {"TRACEMARK_CLIENTS_DB": str(tmp_path / "clients.sqlite"), "TRACEMARK_AUDIT_DB": str(tmp_path / "audit.sqlite"),
           "TRACEMARK_RESPONSES_DB": str(tmp_path / "responses.sqlite")}
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, "serve", str(model), "--port", str(port), "--workers", "2", "--threads", "1",
         "--rate", "100000", "--burst", "100000", "--marking", "--marking-secret", str(secret), "--marking-rate", "0.1", "--marking-cap", "0.5",
         "--monitor", "--monitor-volume", "150"],
        env={**os.environ, **env, "PYTHONPATH": str(Path(__file__).parents[2])},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    x = digits.x_train[:320]
    try:
        _wait_ready(proc, url)
        rounds = []
        for _ in range(2):  # new connections each round, so requests spread over both workers
            labels = []
            for start in range(0, len(x), 32):
                r = httpx.post(f"{url}/v1/predict", json={"inputs": x[start:start + 32].tolist()},
                               headers={"Authorization": f"Bearer {issued.token}"}, timeout=10.0)
                assert r.status_code == 200, r.text
                labels += r.json()["labels"]
            rounds.append(np.array(labels))
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    with torch.no_grad():
        own = victim(torch.from_numpy(x)).argmax(1).numpy()
    assert np.array_equal(rounds[0], rounds[1])  # same input, same answer, whichever worker answered
    altered = int((rounds[0] != own).sum())
    assert 12 <= altered <= 56  # Binomial(320, 0.1): mean 32
    assert len(ResponseStore(tmp_path / "responses.sqlite").marked(issued.client.id)) == altered
    alerts = AlertStore(str(tmp_path / "audit.sqlite")).list(issued.client.id)
    assert alerts and {a.signal for a in alerts} == {"volume"}
