"""End to end: `tracemark serve` of a protected package as a real process with two workers, managed by the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import torch
from typer.testing import CliRunner

from tests.servers import free_port
from tests.serve.conftest import cli_app
from tracemark.package import Licence, OutputPolicy, PassphraseWrap, VendorKey, pack_model

PASSPHRASE = "serve me, but only through the API"
LAUNCH = (
    "import sys; from tests.serve.conftest import cli_app; "
    "sys.argv = ['tracemark', *sys.argv[1:]]; cli_app()()"
)


def _cli(*args: str, env: dict[str, str]) -> dict:
    result = CliRunner().invoke(cli_app(), [*args, "--json"], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture()
def package(tmp_path: Path, net) -> Path:
    now = datetime.now(timezone.utc)
    licence = Licence("acme", now - timedelta(hours=1), now + timedelta(days=1), (), OutputPolicy("top_k", 2, 2))
    out = tmp_path / "digits.tmpkg"
    vendor = VendorKey.generate()
    vendor.public.save(tmp_path / "vendor.pub")  # what the customer pins
    pack_model(net, out, vendor=vendor, licence=licence, wraps=[PassphraseWrap(PASSPHRASE, n=2**10)])
    return out


def _wait_ready(proc: subprocess.Popen, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready")


def test_serve_package_with_workers_clients_and_audit_export(tmp_path: Path, package: Path, net, digits) -> None:
    env = {"TRACEMARK_CLIENTS_DB": str(tmp_path / "clients.sqlite"), "TRACEMARK_AUDIT_DB": str(tmp_path / "audit.sqlite")}
    alice = _cli("clients", "add", "alice", env=env)["api_key"]
    bob = _cli("clients", "add", "bob", "--output", "probabilities", "--rate", "1", "--burst", "100", env=env)["api_key"]
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, "serve", str(package), "--port", str(port), "--workers", "2",
         "--passphrase-env", "PKG_PASS", "--vendor-pub", str(tmp_path / "vendor.pub"), "--threads", "1"],
        env={**os.environ, **env, "PKG_PASS": PASSPHRASE, "PYTHONPATH": str(Path(__file__).parents[2])},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url)
        x = digits.x_test[:8]
        with torch.no_grad():
            expected = net(torch.from_numpy(x)).argmax(1).tolist()
        with httpx.Client(base_url=url, timeout=10.0) as http:
            answered = 0
            for i in range(20):  # spread over both workers
                who = alice if i % 2 else bob
                r = http.post("/v1/predict", json={"inputs": x.tolist()}, headers={"Authorization": f"Bearer {who}"})
                assert r.status_code == 200 and r.json()["labels"] == expected
                # bob asked for probabilities, but the licence caps everyone at top-2
                assert r.json()["policy"] == {"mode": "top_k", "top_k": 2, "decimals": 2}
                answered += len(x)
            assert http.post("/v1/predict", json={"inputs": [[0]]}, headers={"Authorization": f"Bearer {alice}"}).status_code == 422
            _cli("clients", "revoke", "alice", env=env)
            for _ in range(4):  # every worker sees the revocation at once
                assert http.post("/v1/predict", json={"inputs": x.tolist()}, headers={"Authorization": f"Bearer {alice}"}).status_code == 403
            statuses = [http.post("/v1/predict", json={"inputs": x.tolist()}, headers={"Authorization": f"Bearer {bob}"}).status_code
                        for _ in range(12)]
            assert 429 in statuses  # bob's 100-query burst is shared by both workers
            answered += statuses.count(200) * len(x)
            assert "weights" not in http.get("/v1/model").text
        # Another process sees a live server's rows once its journal is imported (every 0.1 s; later under load).
        deadline = time.monotonic() + 10.0
        while (export := _cli("audit", "export", "--out", str(tmp_path / "audit.json"), env=env))["rows"] < answered:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert export["rows"] == answered
        records = json.loads((tmp_path / "audit.json").read_text())["records"]
        assert {r["client_name"] for r in records} == {"alice", "bob"}
        assert sum(r["client_name"] == "alice" for r in records) == 10 * len(x)
        listed = _cli("clients", "list", env=env)["clients"]
        assert [c["name"] for c in listed if c["revoked"]] == ["alice"] and "api_key" not in json.dumps(listed)
    finally:
        proc.terminate()
        err = proc.communicate(timeout=20)[1]
    assert "serving model-" in err and PASSPHRASE not in err and alice not in err and bob not in err


def test_serve_refuses_a_package_it_cannot_open(tmp_path: Path, package: Path) -> None:
    result = CliRunner().invoke(cli_app(), ["serve", str(package), "--port", str(free_port())],
                                env={"TRACEMARK_CLIENTS_DB": str(tmp_path / "c.sqlite"), "TRACEMARK_AUDIT_DB": str(tmp_path / "a.sqlite")})
    assert result.exit_code != 0 and "needs a way to open it" in str(result.exception)
    assert not (tmp_path / "a.sqlite").exists()
