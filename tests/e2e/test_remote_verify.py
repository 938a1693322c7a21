"""Verification over HTTP against a model served on 127.0.0.1 gives the local verdict."""

from __future__ import annotations

import torch

import tracemark as tm
from tests.servers import prediction_app, serve_app


def _serve(model):
    def predict(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return prediction_app(predict, num_classes=10)


def test_http_verdict_equals_local_verdict(models):
    for model, expected in ((models.marked, "copy"), (models.independent, "no-evidence")):
        local = tm.verify(models.key, tm.TorchTarget(model))
        with serve_app(_serve(model)) as base_url:
            remote_target = tm.HttpTarget(f"{base_url}/predict", batch_size=25, num_classes=10)
            remote = tm.verify(models.key, remote_target, batch_size=25)
        assert local.verdict == remote.verdict == expected
        assert remote.answers == local.answers and remote.p_value == local.p_value
        assert len(remote_target.transcript) == 4  # 100 triggers in batches of 25
