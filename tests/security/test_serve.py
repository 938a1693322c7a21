"""Hostile HTTP clients against `tracemark serve` (issue 15: findings 3, 8, 9 and the /docs part of 11).

The server runs as a real process (the CLI, so its connection options are the ones a user sets) on 127.0.0.1,
or in a thread for the checks that need no connection limits; every loop is bounded.
"""

from __future__ import annotations

import io
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image

import tracemark as tm
from tests.serve.conftest import net, run_server  # noqa: F401 (fixtures)
from tests.serve.test_serve_e2e import LAUNCH, _wait_ready
from tests.servers import free_port
from tracemark.serve import ClientStore

ADMIN = "admin-token-of-the-security-tests"
TIMEOUT = 1.0
"""The header and body timeouts the CLI server is started with (seconds)."""
MAX_CONNECTIONS = 16


@dataclass
class CliServer:
    url: str
    port: int
    pid: int
    honest: str
    attacker: str


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory: pytest.TempPathFactory, net) -> Iterator[CliServer]:  # noqa: F811
    """`tracemark serve` of a plain model file: short read deadlines, a connection cap, an admin token, two clients
    (``attacker`` limited to 5 queries/s with a burst of 5)."""
    tmp = tmp_path_factory.mktemp("serve-security")
    model = tm.save_model(net, tmp / "digits.safetensors")
    clients = ClientStore(tmp / "clients.sqlite")
    honest, attacker = clients.add("honest").token, clients.add("attacker", rate=5.0, burst=5.0).token
    port = free_port()
    env = {**os.environ, "TRACEMARK_CLIENTS_DB": str(tmp / "clients.sqlite"), "TRACEMARK_AUDIT_DB": str(tmp / "audit.sqlite"),
           "TRACEMARK_ADMIN_TOKEN": ADMIN, "PYTHONPATH": str(Path(__file__).parents[2])}
    with open(tmp / "server.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, "serve", str(model), "--port", str(port), "--threads", "1", "--predict-threads", "2",
             "--header-timeout", str(TIMEOUT), "--body-timeout", str(TIMEOUT), "--max-connections", str(MAX_CONNECTIONS)],
            env=env, stdout=subprocess.DEVNULL, stderr=log, text=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url)
        yield CliServer(url, port, proc.pid, honest, attacker)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def _multipart(images: list[bytes]) -> tuple[bytes, str]:
    boundary = "tracemark-security-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{i}.png"\r\n'
             f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n" for i, data in enumerate(images)]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def _honest_p50(http: httpx.Client, token: str, body: dict, n: int = 30, pause: float = 0.05) -> float:
    """Median latency of ``n`` requests ``pause`` seconds apart (so that 30 of them span about 1.5 s)."""
    times = []
    for _ in range(n):
        time.sleep(pause)
        start = time.perf_counter()
        response = http.post("/v1/predict", json=body, headers={"Authorization": f"Bearer {token}"})
        times.append(time.perf_counter() - start)
        assert response.status_code == 200, response.text
    return statistics.median(times)


ATTACKER = """
import json, sys, threading, time
import httpx

url, token, content_type, seconds, pace = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
payloads = {n: open(path, "rb").read() for n, path in zip((64, 4), sys.argv[6:8])}
results = {64: [], 4: []}
stop = time.monotonic() + seconds

def attack(n):
    headers = {"Authorization": "Bearer " + token, "Content-Type": content_type}
    with httpx.Client(base_url=url, timeout=30.0) as http:
        while time.monotonic() < stop:
            start = time.perf_counter()
            try:
                status = http.post("/v1/predict/image", content=payloads[n], headers=headers).status_code
            except httpx.TransportError:  # a refused body's connection closed under the upload: reset, never read
                status = -1
            results[n].append((status, time.perf_counter() - start))
            time.sleep(max(0.0, start + pace - time.perf_counter()))

threads = [threading.Thread(target=attack, args=(n,)) for n in (64, 4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(results))
"""
"""A separate process (so that its threads do not hold the honest client's GIL) sending, for ``seconds``, requests of
64 and of 4 images from two threads, each starting a request every ``pace`` seconds or as soon as it is answered if
later; prints their statuses (-1: the connection was reset while uploading a refused body) and times as JSON."""
ATTACK_PACE = 0.04
"""Two threads × 25 requests/s × 1.6 MB: 80 MB/s, what one client on a 1 Gbit/s link can send, 10x its allowed request
rate and 640x its allowed query rate. (Unpaced on loopback, ~600 requests/s, 1 GB/s, the transfer alone costs the
2-core test machine about as much CPU as the honest client's requests.)"""


def test_heavy_image_bodies_of_a_rate_limited_client_are_refused_before_decoding(cli_server: CliServer, digits, tmp_path) -> None:
    """Finding 3: a client limited to 5 queries/s sends 64 (and 4) large PNGs per request, 50 requests a second;
    its bodies are counted and refused (422 over its burst, 429 over its rate) before any image is decoded (the
    decode counter moves by exactly the admitted bodies' images); the honest client's median latency alone and under
    attack is printed."""
    import json

    big = _png(4096)  # 16.7 Mpixel, ~25 KB: ~0.1 s to decode each
    (heavy_64, content_type), (heavy_4, _) = _multipart([big] * 64), _multipart([big] * 4)
    (tmp_path / "64.bin").write_bytes(heavy_64)
    (tmp_path / "4.bin").write_bytes(heavy_4)
    body = {"inputs": digits.x_test[:1].tolist()}
    with httpx.Client(base_url=cli_server.url, timeout=30.0) as http:
        _honest_p50(http, cli_server.honest, body, 10, 0.0)  # warm-up
        alone = _honest_p50(http, cli_server.honest, body)
        attacker = subprocess.Popen([sys.executable, "-c", ATTACKER, cli_server.url, cli_server.attacker, content_type, "3.5",
                                     str(ATTACK_PACE), str(tmp_path / "64.bin"), str(tmp_path / "4.bin")], stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)  # the attacker process is up and sending
        attacked = _honest_p50(http, cli_server.honest, body)
        out, _ = attacker.communicate(timeout=60)
        metrics = http.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    results = {int(n): rows for n, rows in json.loads(out).items()}
    print(f"honest p50 alone {alone * 1e3:.2f} ms, under attack {attacked * 1e3:.2f} ms (x{attacked / alone:.2f}); "
          f"attacker requests: {len(results[64])} x 64 images, {len(results[4])} x 4 images")
    assert results[64] and {status for status, _ in results[64]} <= {422, 429, -1}  # 64 > burst: never decoded
    statuses_4 = [status for status, _ in results[4]]
    assert 429 in statuses_4 and set(statuses_4) <= {200, 429, -1}  # -1: reset while uploading a refused body
    admitted = statuses_4.count(200)
    assert _metric(metrics, "tracemark_images_decoded_total") == 4 * admitted  # refused bodies were never decoded
    # The latencies are printed, not asserted: on a loaded 2-core machine they flake, and the guide keeps timings in
    # benchmarks. What keeps the honest client fast is asserted above: no refused body is ever decoded.


def _noise_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("L", (side, side), os.urandom(side * side)).save(buffer, format="PNG")  # incompressible
    return buffer.getvalue()


def test_a_request_refused_before_its_body_is_read_closes_the_connection_when_the_body_is_large(cli_server: CliServer, digits) -> None:
    """Finding 3: a refusal on the request head (unknown key, over the rate) of a body over 64 KiB ends the connection,
    so the server never receives or parses the refused body; a small refused body is drained instead, and the
    connection stays usable (closing with it unread could reset the connection before the client reads the answer)."""
    heavy, content_type = _multipart([_noise_png(300)] * 4)
    assert len(heavy) > 64 << 10
    with httpx.Client(base_url=cli_server.url, timeout=10.0) as http:
        small = http.post("/v1/predict", json={"inputs": digits.x_test[:1].tolist()}, headers={"Authorization": "Bearer nobody"})
        large = http.post("/v1/predict/image", content=heavy, headers={"Authorization": "Bearer nobody", "Content-Type": content_type})
        answers = []
        for _ in range(20):  # the attacker's burst is 5 queries: within a few requests its bucket is empty at the head
            response = http.post("/v1/predict/image", content=heavy, headers={"Authorization": f"Bearer {cli_server.attacker}",
                                                                              "Content-Type": content_type})
            answers.append((response.status_code, response.headers.get("connection")))
            if answers[-1] == (429, "close"):
                break
    assert small.status_code == 401 and small.headers.get("connection") != "close"
    assert large.status_code == 401 and large.headers.get("connection") == "close"
    assert answers[-1] == (429, "close"), answers  # (a 429 after the body was read, over the burst, keeps the connection)


def _trickle(first: bytes, drip: bytes, port: int, limit: float = 6.0) -> tuple[float, bytes]:
    """Send ``first``, then ``drip`` every 0.2 s until the server closes the connection; (seconds it stayed open, what it sent)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(0.2)
        start = time.monotonic()
        sock.sendall(first)
        received = b""
        while time.monotonic() - start < limit:
            try:
                data = sock.recv(4096)
            except socket.timeout:
                try:
                    sock.sendall(drip)
                except OSError:
                    break
                continue
            except OSError:
                break
            if not data:
                break
            received += data
        return time.monotonic() - start, received


def test_slow_header_and_slow_body_connections_are_closed_after_the_timeout(cli_server: CliServer, digits) -> None:
    """Finding 8: a request head trickled a header line at a time, and a body trickled a byte at a time, are cut off
    after the configured timeout (1 s here), the slow body with a 408; the server answers others meanwhile."""
    head = b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    slow_body = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {cli_server.honest}\r\n"
                 "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{").encode()
    outcomes: list[tuple[str, float, bytes]] = []
    lock = threading.Lock()

    def run(kind: str, first: bytes, drip: bytes) -> None:
        elapsed, received = _trickle(first, drip, cli_server.port)
        with lock:
            outcomes.append((kind, elapsed, received))

    threads = [threading.Thread(target=run, args=("head", head, b"X-Slow: 1\r\n")) for _ in range(6)]
    threads += [threading.Thread(target=run, args=("body", slow_body, b" ")) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    ok = httpx.post(f"{cli_server.url}/v1/predict", json={"inputs": digits.x_test[:1].tolist()},
                    headers={"Authorization": f"Bearer {cli_server.honest}"}, timeout=10.0)
    for thread in threads:
        thread.join(timeout=10)
    assert ok.status_code == 200
    times = {kind: sorted(round(elapsed, 2) for k, elapsed, _ in outcomes if k == kind) for kind in ("head", "body")}
    print(f"disconnected after (s): slow head {times['head']}, slow body {times['body']}")
    assert len(outcomes) == 12
    assert all(TIMEOUT - 0.05 <= elapsed <= TIMEOUT + 1.0 for _, elapsed, _ in outcomes), outcomes
    assert all(received == b"" for kind, _, received in outcomes if kind == "head")
    assert all(received.startswith(b"HTTP/1.1 408 ") for kind, _, received in outcomes if kind == "body"), outcomes


def test_connections_beyond_the_limit_get_503(cli_server: CliServer) -> None:
    """Finding 8: with --max-connections 16 open, a further request is answered 503; once they close, 200 again."""
    socks = [socket.create_connection(("127.0.0.1", cli_server.port)) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in socks:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # a head that is never finished
        time.sleep(0.1)
        assert httpx.get(f"{cli_server.url}/healthz", timeout=5.0).status_code == 503
    finally:
        for sock in socks:
            sock.close()
    deadline = time.monotonic() + 5
    while (status := httpx.get(f"{cli_server.url}/healthz", timeout=5.0).status_code) != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status == 200


def test_metrics_show_no_clients_or_pid_without_the_admin_token(cli_server: CliServer, net, digits, run_server,  # noqa: F811
                                                                monkeypatch) -> None:
    """Finding 9: with an admin token configured, /metrics needs it (401 otherwise); without one configured, it shows
    aggregate counters only: no client names, no per-client counts, no worker PID."""
    httpx.post(f"{cli_server.url}/v1/predict", json={"inputs": digits.x_test[:2].tolist()},
               headers={"Authorization": f"Bearer {cli_server.honest}"}, timeout=10.0)
    refused = httpx.get(f"{cli_server.url}/metrics", timeout=5.0)
    assert refused.status_code == 401 and "admin token" in refused.json()["detail"] and "honest" not in refused.text
    wrong = httpx.get(f"{cli_server.url}/metrics", headers={"Authorization": f"Bearer {cli_server.honest}"}, timeout=5.0)
    assert wrong.status_code == 401  # a client's API key is not the admin token
    full = httpx.get(f"{cli_server.url}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5.0).text
    assert 'client="honest"' in full and f'pid="{cli_server.pid}"' in full

    monkeypatch.delenv("TRACEMARK_ADMIN_TOKEN", raising=False)
    with run_server(net) as srv:
        token = srv.clients.add("secret-customer").token
        assert srv.post(token, {"inputs": digits.x_test[:3].tolist()}).status_code == 200
        public = srv.http.get("/metrics")
        assert public.status_code == 200
        assert "secret-customer" not in public.text and "client=" not in public.text and "pid=" not in public.text
        assert str(os.getpid()) not in public.text
        assert _metric(public.text, "tracemark_queries_answered_total") == 3  # the aggregate is still there


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG that declares ``width``×``height`` pixels (1-bit grey), with one row of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (1 + width // 8))) + chunk(b"IEND", b"")


def test_decompression_bombs_and_oversized_images_are_refused_413_before_decoding(net, digits, run_server) -> None:  # noqa: F811
    """Decode limits: a 200 B PNG declaring 10^10 pixels (Pillow's bomb guard), a 5000×5000 image (over the
    per-image bound) and 5 images of 4096×4096 (over the per-request bound) are refused 413 from their headers, quickly."""
    with run_server(net) as srv:
        headers = {"Authorization": f"Bearer {srv.clients.add('bomber', rate=1000.0, burst=1000.0).token}"}
        cases = {"bomb": [_bomb_png(100_000, 100_000)], "large": [_png(5000)], "many": [_png(4096)] * 5}
        for name, images in cases.items():
            payload, content_type = _multipart(images)
            start = time.perf_counter()
            response = srv.http.post("/v1/predict/image", content=payload, headers={**headers, "Content-Type": content_type})
            elapsed = time.perf_counter() - start
            assert response.status_code == 413, (name, response.text)
            assert elapsed < 0.3, (name, elapsed)
        assert "decompression bomb" in srv.http.post("/v1/predict/image", files=[("image", ("b.png", _bomb_png(100_000, 100_000)))],
                                                     headers=headers).json()["detail"]
        assert srv.server.metrics.render().count("tracemark_images_decoded_total{") == 0  # nothing was decoded
        small = srv.http.post("/v1/predict/image", files=[("image", ("ok.png", _png(64)))], headers=headers)
        assert small.status_code == 200


def test_docs_pages_load_nothing_from_another_host(net, run_server) -> None:  # noqa: F811
    """Finding 11 (part): /docs and /redoc reference only the server's own assets, and those assets are served."""
    with run_server(net) as srv:
        for page in ("/docs", "/redoc"):
            response = srv.http.get(page)
            assert response.status_code == 200 and "text/html" in response.headers["content-type"]
            assert not re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+", response.text), page  # no absolute or protocol-relative URL
            assets = re.findall(r'(?:src|href)="([^"]+)"', response.text)
            assert assets, page
            for asset in assets:
                fetched = srv.http.get(asset)
                assert fetched.status_code == 200 and len(fetched.content) > 0, asset
        assert srv.http.get("/openapi.json").json()["paths"]["/v1/predict"]
