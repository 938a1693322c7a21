"""Verification over HTTP against the protected server gives the local verdict (Python API and CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import tracemark as tm
from tests.servers import prediction_app, serve_app
from tests.serve.conftest import cli_app
from tracemark.package.licence import OutputPolicy


def _same_verdict_over_http(key, run_server, cases) -> None:
    for model, expected in cases:
        local = tm.verify(key, tm.TorchTarget(model))
        with run_server(model) as srv:
            issued = srv.clients.add(f"verifier-{expected}")
            token = issued.token
            target = tm.HttpTarget(f"{srv.url}/v1/predict", api_key=token, batch_size=25, num_classes=10)
            remote = tm.verify(key, target, batch_size=25)
            assert srv.server.audit.count(client_id=issued.client.id) == remote.queries == len(key.triggers().inputs)
        assert local.verdict == remote.verdict == expected
        assert remote.answers == local.answers and remote.p_value == local.p_value
        assert [r.status for r in target.transcript] == [200] * 4


def test_http_verdict_equals_local_verdict(key, marked, net, run_server) -> None:
    _same_verdict_over_http(key, run_server, ((marked, "copy"), (net, "no-evidence")))


@pytest.mark.slow
def test_http_verdict_equals_local_verdict_for_an_embedded_mark(models, run_server) -> None:
    _same_verdict_over_http(models.key, run_server, ((models.marked, "copy"), (models.independent, "no-evidence")))


def test_cli_verify_url_against_the_server_and_a_foreign_api(key, marked, run_server, tmp_path: Path) -> None:
    key_path = key.save(tmp_path / "key.json")
    runner = CliRunner()
    with run_server(marked) as srv:
        token = srv.clients.add("cli", OutputPolicy("top_k", 3, 2)).token
        args = ["verify", "--key", str(key_path), "--url", f"{srv.url}/v1/predict", "--json",
                "--transcript", str(tmp_path / "t.json")]
        result = runner.invoke(cli_app(), args, env={"TRACEMARK_API_KEY": token})
        assert result.exit_code == 0, result.output
        verdict = json.loads(result.output[result.output.index("{"):])
        assert verdict["verdict"] == "copy"
        refused = runner.invoke(cli_app(), args, env={"TRACEMARK_API_KEY": "tmk_wrong"})
        assert refused.exit_code != 0

    def predict(x):
        with torch.no_grad():
            return marked(torch.from_numpy(x)).numpy()

    foreign = prediction_app(predict, num_classes=10, input_shape=(1, 8, 8))  # someone else's API shape
    with serve_app(foreign) as url:
        result = runner.invoke(cli_app(), ["verify", "--key", str(key_path), "--url", f"{url}/custom", "--json",
                                           "--template", '{"data": {"instances": "{{inputs_flat}}"}}', "--field", "result.items"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output[result.output.index("{"):])["verdict"] == "copy"
