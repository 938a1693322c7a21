"""The protected API over a real socket: auth, limits, malformed input, policies, audit rows, metrics."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tracemark.package.licence import OutputPolicy
from tracemark.targets.base import Answers
from tracemark.targets.http import inputs_sha256


def _labels(model, x: np.ndarray) -> list[int]:
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(x, dtype=np.float32))).argmax(1).tolist()


def test_keys_are_required_and_revocation_is_immediate(net, digits, run_server) -> None:
    x = digits.x_test[:3]
    with run_server(net) as srv:
        alice = srv.clients.add("alice").token
        assert srv.post(None, {"inputs": x.tolist()}).status_code == 401
        wrong = srv.post("tmk_not-a-key", {"inputs": x.tolist()})
        assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
        ok = srv.post(alice, {"inputs": x.tolist()})
        assert ok.status_code == 200 and ok.json()["labels"] == _labels(net, x)
        assert srv.http.post("/v1/predict", json={"inputs": x.tolist()}, headers={"X-API-Key": alice}).status_code == 200
        srv.clients.revoke("alice")
        refused = srv.post(alice, {"inputs": x.tolist()})
        assert refused.status_code == 403 and "revoked" in refused.json()["detail"]
        assert srv.server.audit.count() == 2 * len(x)  # refused requests leave no audit rows


def test_rate_limit_answers_429_with_retry_after_then_recovers(net, digits, run_server) -> None:
    x = digits.x_test[:10].tolist()
    with run_server(net, rate=20.0, burst=30.0) as srv:
        token = srv.clients.add("greedy").token
        statuses = [srv.post(token, {"inputs": x}) for _ in range(4)]
        assert [r.status_code for r in statuses[:3]] == [200, 200, 200]
        limited = statuses[3]
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert "rate limit" in limited.json()["detail"]
        own = srv.clients.add("vip", rate=1000.0, burst=1000.0).token  # a client's own allowance overrides the default
        assert all(srv.post(own, {"inputs": x}).status_code == 200 for _ in range(5))
        import time

        time.sleep(0.1)  # 2 tokens refilled: a request's first query is charged before its body is read (else 429)
        too_big = srv.post(token, {"inputs": digits.x_test[:40].tolist()})
        assert too_big.status_code == 422 and "burst" in too_big.json()["detail"]
        time.sleep(0.6)  # 12 tokens refilled
        assert srv.post(token, {"inputs": x}).status_code == 200
        assert srv.server.audit.count() == 9 * 10


MALFORMED = [
    (b"{", 422, "not valid JSON"),
    (b"[1, 2]", 422, "JSON object"),
    (b'{"inputs": []}', 422, "empty"),
    (b'{"inputs": [[1, 2, 3]]}', 422, "shape [3]"),
    (b'{"inputs": [[[1, 2], [3]]]}', 422, "ragged"),
    (b'{"inputs": [["a"]]}', 422, "non-numbers"),
    (b'{"inputs": [[true, false]]}', 422, "true/false"),
    (b'{"inputs": 5}', 422, "list of inputs"),
    (b'{"inputs": [[0]], "extra": 1}', 422, "unknown field"),
    (b'{"data": [[0]]}', 422, "unknown field"),
    (b'{"inputs": [' + b"[" * 100_000 + b"]", 422, "nested too deeply"),
    (json.dumps({"inputs": [[[[float("nan")] * 8] * 8]]}).encode(), 422, "NaN"),
    (json.dumps({"inputs": [[[[1e308 * 10] * 8] * 8]]}).encode(), 422, "NaN or infinity"),
    (json.dumps({"inputs": [[[[0.5] * 8] * 8], [[[7.0] * 8] * 8]]}).encode(), 422, "input 1 has values in [7, 7]"),
    (json.dumps({"inputs": [[0.0] * 64] * 65}).encode(), 422, "maximum of 64"),
    ("{\"inputs\": [\"\udcff\"]}".encode("utf-8", "surrogatepass"), 422, "non-numbers"),
    (b"\xff\xfe{", 422, "not valid JSON"),
]


def test_malformed_inputs_get_4xx_with_a_message_and_the_server_keeps_answering(net, digits, run_server) -> None:
    x = digits.x_test[:5]
    with run_server(net) as srv:
        token = srv.clients.add("fuzzer", rate=10_000.0, burst=10_000.0).token
        for body, status, message in MALFORMED:
            response = srv.post(token, content=body)
            assert response.status_code == status, (body[:60], response.text)
            assert message in response.json()["detail"], (body[:60], response.text)
            good = srv.post(token, {"inputs": x.tolist()})
            assert good.status_code == 200 and good.json()["labels"] == _labels(net, x)
        flat = srv.post(token, {"inputs": x.reshape(5, -1).tolist()})  # flat N×(C·H·W) is accepted too
        assert flat.json()["labels"] == _labels(net, x)
        assert srv.server.audit.count() == len(MALFORMED) * 5 + 5


def test_oversized_bodies_are_refused_413(net, digits, run_server) -> None:
    with run_server(net, max_body_bytes=64 << 10) as srv:
        token = srv.clients.add("big").token
        declared = srv.post(token, content=b" " * (65 << 10))
        assert declared.status_code == 413 and "at most 65536" in declared.json()["detail"]

        def chunks():  # no Content-Length: chunked transfer, counted as it arrives
            for _ in range(100):
                yield b" " * 1024

        streamed = srv.http.post("/v1/predict", content=chunks(), headers={"Authorization": f"Bearer {token}"})
        assert streamed.status_code == 413 and "exceeds 65536" in streamed.json()["detail"]
        assert srv.post(token, {"inputs": digits.x_test[:2].tolist()}).status_code == 200


def test_output_policies_per_client_and_capped_by_licence(net, digits, run_server) -> None:
    x = digits.x_test[:4]
    with torch.no_grad():
        probs = torch.softmax(net(torch.from_numpy(x)).double(), 1).numpy()
    with run_server(net) as srv:
        label = srv.post(srv.clients.add("default").token, {"inputs": x.tolist()}).json()
        assert set(label) == {"request_id", "model", "policy", "labels"} and label["policy"]["mode"] == "label"
        top = srv.post(srv.clients.add("top", OutputPolicy("top_k", 3, 2)).token, {"inputs": x.tolist()}).json()
        assert [t["labels"] for t in top["top_k"]] == np.argsort(-probs, axis=1)[:, :3].tolist()
        assert np.allclose([t["scores"] for t in top["top_k"]], np.round(np.sort(probs, 1)[:, ::-1][:, :3], 2))
        full = srv.post(srv.clients.add("full", OutputPolicy("probabilities", None, 3)).token, {"inputs": x.tolist()}).json()
        sent = np.asarray(full["probabilities"])
        assert np.array_equal(sent, np.round(sent, 3)) and np.allclose(sent, probs, atol=5e-4 + 1e-9) and "top_k" not in full
        # a package licence caps every client: top-2 at 1 decimal at most
        srv.server.model.licence = _licence(OutputPolicy("top_k", 2, 1))
        capped = srv.post(_token(srv, "capped", OutputPolicy("probabilities")), {"inputs": x.tolist()}).json()
        assert capped["policy"] == {"mode": "top_k", "top_k": 2, "decimals": 1} and "probabilities" not in capped
        assert all(len(t["scores"]) == 2 for t in capped["top_k"])
        rows = list(srv.server.audit.records())
        assert [r.policy for r in rows[-4:]] == ["top-2, rounded to 1 decimals"] * 4
        assert rows[-1].answer == {"label": capped["labels"][3], "top_k": capped["top_k"][3]}


def _token(srv, name: str, policy: OutputPolicy) -> str:
    return srv.clients.add(name, policy).token


def _licence(policy: OutputPolicy):
    from datetime import datetime, timedelta, timezone

    from tracemark.package.licence import Licence

    now = datetime.now(timezone.utc)
    return Licence("acme", now - timedelta(days=1), now + timedelta(days=1), (), policy)


def test_expired_licence_stops_answers(net, digits, run_server) -> None:
    from datetime import datetime, timedelta, timezone

    from tracemark.package.licence import Licence

    with run_server(net) as srv:
        token = srv.clients.add("late").token
        now = datetime.now(timezone.utc)
        srv.server.model.licence = Licence("acme", now - timedelta(days=2), now - timedelta(seconds=1))
        refused = srv.post(token, {"inputs": digits.x_test[:1].tolist()})
        assert refused.status_code == 503 and "expired" in refused.json()["detail"]
        assert srv.http.get("/healthz").status_code == 503


def test_audit_has_one_row_per_answered_input_with_hashes(net, digits, run_server) -> None:
    x = digits.x_test[:7]
    with run_server(net) as srv:
        token = srv.clients.add("auditee").token
        answer = srv.post(token, {"inputs": x.tolist()}).json()
        srv.post(token, {"inputs": x[:2].tolist()})
        rows = list(srv.server.audit.records())
        assert len(rows) == 9 and srv.server.audit.count(client_id=srv.clients.get("auditee").id) == 9
        first = rows[:7]
        assert {r.request_id for r in first} == {answer["request_id"]}
        assert [r.batch_index for r in first] == list(range(7))
        assert [r.input_sha256 for r in first] == [inputs_sha256(x[i : i + 1]) for i in range(7)]
        assert {r.batch_sha256 for r in first} == {inputs_sha256(x)}
        assert [r.answer["label"] for r in first] == answer["labels"]
        assert all(r.client_name == "auditee" and r.time.endswith("Z") for r in rows)


def test_answer_hook_sees_client_and_inputs_and_its_answers_are_sent_and_audited(net, digits, run_server) -> None:
    seen = []

    def hook(client, inputs, answers):
        seen.append((client.name, inputs.shape))
        labels = (np.asarray(answers.labels) + 1) % 10 if client.name == "marked-client" else answers.labels
        return Answers(labels, answers.probabilities)

    x = digits.x_test[:3]
    with run_server(net, hook=hook) as srv:
        plain = srv.post(srv.clients.add("plain-client").token, {"inputs": x.tolist()}).json()["labels"]
        shifted = srv.post(srv.clients.add("marked-client").token, {"inputs": x.tolist()}).json()["labels"]
        assert plain == _labels(net, x) and shifted == [(v + 1) % 10 for v in plain]
        assert seen == [("plain-client", (3, 1, 8, 8)), ("marked-client", (3, 1, 8, 8))]
        assert [r.answer["label"] for r in srv.server.audit.records()][-3:] == shifted


def test_an_unexpected_failure_is_a_500_without_details_and_the_server_keeps_answering(net, digits, run_server, caplog) -> None:
    def hook(client, inputs, answers):
        if client.name == "breaker":
            raise RuntimeError("secret internals /srv/model.bin")
        return answers

    x = digits.x_test[:2]
    with run_server(net, hook=hook) as srv:
        broken = srv.post(srv.clients.add("breaker").token, {"inputs": x.tolist()})
        assert broken.status_code == 500 and broken.json() == {"detail": "Internal Server Error"}
        assert "secret internals" in caplog.text  # logged for the operator, not sent to the client
        ok = srv.post(srv.clients.add("fine").token, {"inputs": x.tolist()}, headers={"Authorization": "Basic abc"})
        assert ok.status_code == 401  # another Authorization scheme is not an API key
        fine = srv.clients.add("fine-2").token
        assert srv.post(None, {"inputs": x.tolist()}, headers={"X-API-Key": fine}).json()["labels"] == _labels(net, x)
        assert srv.server.audit.count() == len(x)  # the failed request left no audit rows
        assert 'path="/v1/predict",status="500"' in srv.http.get("/metrics").text


def _png(array: np.ndarray, size: tuple[int, int] | None = None) -> bytes:
    img = Image.fromarray((array[0] * 255).round().astype(np.uint8), mode="L")
    if size:
        img = img.resize(size)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_upload(net, digits, run_server) -> None:
    x = digits.x_test[:2]
    with run_server(net) as srv:
        token = srv.clients.add("camera").token
        headers = {"Authorization": f"Bearer {token}"}
        files = [("image", (f"{i}.png", _png(x[i]), "image/png")) for i in range(2)]
        answer = srv.http.post("/v1/predict/image", files=files, headers=headers)
        quantised = np.round(x * 255) / 255
        assert answer.status_code == 200 and answer.json()["labels"] == _labels(net, quantised)
        resized = srv.http.post("/v1/predict/image", files=[("image", ("big.png", _png(x[0], (32, 32)), "image/png"))], headers=headers)
        assert resized.status_code == 200 and len(resized.json()["labels"]) == 1
        broken = srv.http.post("/v1/predict/image", files=[("image", ("x.png", b"not an image", "image/png"))], headers=headers)
        assert broken.status_code == 422 and "not a readable image" in broken.json()["detail"]
        missing = srv.http.post("/v1/predict/image", data={"other": "1"}, headers=headers)
        assert missing.status_code == 422 and "no 'image'" in missing.json()["detail"]
        assert srv.http.post("/v1/predict/image", files=files).status_code == 401
        assert srv.server.audit.count() == 3


def test_public_description_health_and_metrics(net, digits, run_server, monkeypatch) -> None:
    admin = "admin-token-of-this-test-0123456789"
    monkeypatch.setenv("TEST_ADMIN_TOKEN", admin)
    with run_server(net, admin_token_env="TEST_ADMIN_TOKEN") as srv:
        token = srv.clients.add("watcher").token
        srv.post(token, {"inputs": digits.x_test[:3].tolist()})
        srv.post(None, {"inputs": []})
        described = srv.http.get("/v1/model")
        assert described.status_code == 200
        info = described.json()
        assert info["input_shape"] == [1, 8, 8] and info["num_classes"] == 10 and info["max_batch"] == 64
        text = described.text.lower()
        assert not any(word in text for word in ("weight", "state_dict", "tmk_", "key_sha256", "conv"))
        assert srv.http.get("/healthz").json() == {"status": "ok", "model": "digits-cnn"}
        assert srv.http.get("/metrics").status_code == 401  # per-client detail is for the admin token only
        metrics = srv.http.get("/metrics", headers={"Authorization": f"Bearer {admin}"})
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        body = metrics.text
        assert 'tracemark_queries_answered_total{client="watcher"' in body and body.count("} 3\n") >= 1
        assert 'tracemark_http_requests_total{path="/v1/predict",pid=' not in body  # labels are sorted: path, status, pid
        assert 'path="/v1/predict",status="401"' in body and 'reason="MissingApiKeyError"' in body
        assert 'tracemark_http_request_duration_seconds_bucket{path="/v1/predict"' in body
        assert srv.http.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]["responses"]["429"]


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/predict/image"])
def test_unknown_routes_and_methods_are_not_500(net, digits, run_server, path: str) -> None:
    with run_server(net) as srv:
        assert srv.http.get(path).status_code == 405
        assert srv.http.get("/nope").status_code == 404


class _Slow(torch.nn.Module):
    """``base`` after a pause, counting how many calls run at once."""

    def __init__(self, base: torch.nn.Module, pause: float) -> None:
        super().__init__()
        import threading

        self.base, self.pause, self.lock, self.running, self.most = base, pause, threading.Lock(), 0, 0
        self.tracemark_spec = base.tracemark_spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.pause)
        with self.lock:
            self.running -= 1
        return self.base(x)


def test_predict_threads_bound_the_requests_answered_at_once(net, digits, run_server) -> None:
    from concurrent.futures import ThreadPoolExecutor

    slow = _Slow(net, 0.2)
    x = digits.x_test[:2].tolist()
    with run_server(slow, predict_threads=2) as srv:
        token = srv.clients.add("many").token
        slow.most = 0
        with ThreadPoolExecutor(6) as senders:
            answers = list(senders.map(lambda _: srv.post(token, {"inputs": x}), range(6)))
        assert [r.status_code for r in answers] == [200] * 6
        assert all(r.json()["labels"] == _labels(net, x) for r in answers)
        assert slow.most == 2  # six requests in flight, two on the model at a time, the rest queued
        assert srv.server.audit.count() == 6 * len(x)
    from tracemark.serve import ServeConfig
    from tracemark.serve.errors import ServeConfigError

    with pytest.raises(ServeConfigError, match="predict threads"):
        ServeConfig(model="m", predict_threads=0)
    from tracemark.serve.endpoint import default_predict_threads

    cpus = default_predict_threads(1)  # by default the pool fills the CPUs, not more
    assert cpus == len(os.sched_getaffinity(0)) and default_predict_threads(cpus) == 1 == default_predict_threads(10 * cpus)
