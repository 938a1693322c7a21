"""Protected serving vs the same model behind a bare FastAPI endpoint, loopback, side by side.

    python bench/serving.py [--models toy,mid,large] [--resnet] [--rounds 5] [--seconds 10] [--batch 1] [--connections 1,4]
                            [--sustained 60] [--quick]

Three models: *toy*, the digits small CNN (1×8×8 input, ~0.06 ms a forward pass), where fixed
per-request costs dominate; *mid*, a 1.7M-parameter CNN on 1×28×28 input (~1.2 ms); and *large*,
a 7.5M-parameter CNN on the same input (~5 ms); ``--resnet`` adds *resnet*, the built-in CIFAR-style
ResNet-18 (11M parameters) on 3×32×32 input (~12 ms), sent as ``.npy`` bodies (``application/x-npy``) rather than
JSON. ``--quick`` is a smoke run (1 round of 3 s, no sustained run). Three servers per model: *bare*, the model behind a plain
FastAPI endpoint (what a team would otherwise deploy; the issue's bar is against it); *lean*, the same work
behind tracemark's own ASGI predict endpoint with no protection (so protected ÷ lean is the cost of the
protection alone); and *protected*, ``tracemark.serve``. Each
server is its own uvicorn process (one worker, one torch thread); `wrk` (Debian package `wrk`)
drives it with 1 connection (the latency one client sees on an idle server) and with 4 (a
saturated worker, where latency is mostly queueing). Each round visits every (model, server,
connections) triple, rotating which server goes first, so that background load hits
all alike; ratios are protected/bare and protected/lean per round, then the median. A final sustained run against the
protected server counts errors and checks that the audit log holds exactly one row per
answered query. Prints a markdown table; --write puts it into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- serving:start -->", "<!-- serving:end -->"


# ----------------------------------------------------------------------------- servers
MODELS = {"toy": (1, 8, 8), "mid": (1, 28, 28), "large": (1, 28, 28), "resnet": (3, 32, 32)}
NPY_MODELS = {"resnet"}
"""Models whose requests are raw tensor bodies (a float32 .npy file) instead of JSON."""
KINDS = ("bare", "lean", "protected")


def _model(size: str):
    """The benchmark model: ``toy`` (digits small CNN), ``mid`` (a 1.7M-parameter CNN) or ``large`` (7.5M)."""
    import torch.nn as nn

    import tracemark as tm

    if size == "toy":
        return tm.build_model("small_cnn", MODELS["toy"], 10, seed=0).eval()
    if size == "resnet":
        return tm.build_model("resnet18", MODELS["resnet"], 10, seed=0).eval()
    if size == "large":
        return nn.Sequential(
            nn.Conv2d(1, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(), nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(256 * 7 * 7, 512), nn.ReLU(), nn.Linear(512, 10),
        ).eval()
    return nn.Sequential(
        nn.Conv2d(1, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(128 * 7 * 7, 256), nn.ReLU(), nn.Linear(256, 10),
    ).eval()


def _bare_work(size: str):
    """Parse (JSON, or a .npy body with numpy's own reader), infer, answer labels: the unprotected work of one request."""
    import io

    import numpy as np

    from tracemark.serve.model import from_module

    served = from_module(_model(size), input_shape=MODELS[size])

    def work(body: bytes) -> dict:
        if size in NPY_MODELS:
            x = np.ascontiguousarray(np.load(io.BytesIO(body), allow_pickle=False), dtype=np.float32)
        else:
            x = np.asarray(json.loads(body)["inputs"], dtype=np.float32)
        return {"labels": served.probabilities(x).argmax(axis=1).tolist()}

    return work


def bare_app(size: str):
    """The same model behind a plain FastAPI endpoint: parse, infer, answer labels. No protection."""
    work = _bare_work(size)
    app = FastAPI()

    @app.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse(await run_in_threadpool(work, body))

    return app


def lean_app(size: str):
    """The same work behind tracemark's plain ASGI predict endpoint, without any protection (no key, checks, limits, audit)."""
    from tracemark.serve.endpoint import PredictEndpoint, predict_pool
    from tracemark.serve.metrics import Metrics

    work = _bare_work(size)
    return PredictEndpoint(lambda _headers: None, lambda _client, body: work(body), Metrics(), predict_pool())


def protected_app(workdir: str, size: str):
    from tracemark.serve import ServeConfig, create_app, from_module

    config = ServeConfig(model="bench", clients_db=f"{workdir}/clients.sqlite", audit_db=f"{workdir}/audit.sqlite",
                         rate=1e9, burst=1e9)
    return create_app(from_module(_model(size), input_shape=MODELS[size]), config)


def run_server(kind: str, size: str, port: int, workdir: str) -> None:
    import torch
    import uvicorn

    torch.set_num_threads(1)
    app = {"bare": bare_app, "lean": lean_app}[kind](size) if kind in ("bare", "lean") else protected_app(workdir, size)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(kind: str, size: str, workdir: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--model", size, "--port", str(port), "--dir", workdir])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            httpx.get(f"{url}/docs", timeout=1.0)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{kind} {size} server did not start")


# ----------------------------------------------------------------------------- load
def _seconds(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def content_type(size: str) -> str:
    return "application/x-npy" if size in NPY_MODELS else "application/json"


def request_body(size: str, batch: int, rng) -> bytes:
    """The benchmark's request for ``size``: ``batch`` random inputs as JSON, or as a float32 .npy file."""
    import io

    import numpy as np

    x = rng.random((batch, *MODELS[size]))
    if size not in NPY_MODELS:
        return json.dumps({"inputs": x.round(4).tolist()}).encode()
    buffer = io.BytesIO()
    np.save(buffer, x.astype(np.float32), allow_pickle=False)
    return buffer.getvalue()


def wrk(url: str, body: bytes, token: str | None, seconds: int, connections: int, workdir: str,
        kind: str = "application/json") -> dict:
    script, payload = Path(workdir) / "post.lua", Path(workdir) / "body.bin"
    payload.write_bytes(body)
    headers = {"Content-Type": kind, **({"Authorization": f"Bearer {token}"} if token else {})}
    lines = ['wrk.method = "POST"', f'local f = assert(io.open({json.dumps(str(payload))}, "rb"))', "wrk.body = f:read(\"*a\")", "f:close()"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), f"{url}/v1/predict"],
                         capture_output=True, text=True, check=True).stdout
    result = {
        "p50": _seconds(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        "p99": _seconds(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        "non2xx": int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0,
        "socket_errors": sum(map(int, m.groups())) if (m := re.search(
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)) else 0,
    }
    return result


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} cores, {cpu}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=KINDS)
    parser.add_argument("--model", choices=sorted(MODELS), default="toy")
    parser.add_argument("--port", type=int)
    parser.add_argument("--dir")
    parser.add_argument("--models", default="toy,mid,large", help="Comma-separated models to compare (toy, mid, large, resnet).")
    parser.add_argument("--resnet", action="store_true", help="Also compare the built-in ResNet-18 (3×32×32) with .npy bodies.")
    parser.add_argument("--quick", action="store_true", help="Smoke run: 1 round of 3 s, no sustained run.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--connections", default="1,4", help="Comma-separated wrk connection counts (one table row pair each).")
    parser.add_argument("--sustained", type=int, default=60, help="Seconds of the final sustained run (0: skip it).")
    parser.add_argument("--write", action="store_true", help="Write the table into docs/benchmarks.md.")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.sustained = 1, 3, 0
    if args.resnet and "resnet" not in args.models.split(","):
        args.models = f"{args.models},resnet".strip(",")
    if args.sustained < 0:
        parser.error("--sustained must be 0 (skip the sustained run) or a number of seconds")
    if args.serve:
        run_server(args.serve, args.model, args.port, args.dir)
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    import numpy as np

    from tracemark.serve import ClientStore

    args.load_at_start = os.getloadavg()[0]
    sizes = [m for m in args.models.split(",") if m]
    unknown = sorted(set(sizes) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    conns = [int(c) for c in args.connections.split(",") if c]
    root = tempfile.mkdtemp(prefix="tracemark-bench-")
    dirs = {size: Path(root, size) for size in sizes}
    for d in dirs.values():
        d.mkdir()
    tokens = {size: ClientStore(dirs[size] / "clients.sqlite").add("bench").token for size in sizes}
    rng = np.random.default_rng(0)
    bodies = {size: request_body(size, args.batch, rng) for size in sizes}
    servers = {(kind, size): start(kind, size, str(dirs[size])) for size in sizes for kind in KINDS}
    try:
        rows: dict[tuple[str, str, int], list[dict]] = {(kind, size, c): [] for kind, size in servers for c in conns}
        for r in range(args.rounds):
            for size in sizes:
                for c in conns:
                    for kind in KINDS[r % 3:] + KINDS[:r % 3]:
                        token = tokens[size] if kind == "protected" else None
                        rows[kind, size, c].append(wrk(servers[kind, size][1], bodies[size], token, args.seconds, c, root,
                                                       content_type(size)))
        sustained: dict | str = "skipped (`--sustained 0`)"
        if args.sustained > 0:
            try:
                sustained = sustained_run(args, servers["protected", sizes[0]][1], dirs[sizes[0]], bodies[sizes[0]],
                                          tokens[sizes[0]], max(conns), root, content_type(sizes[0]))
            except Exception as exc:  # noqa: BLE001 -- the comparison's results are kept whatever the sustained run hit
                sustained = f"FAILED ({type(exc).__name__}: {exc})"
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=10)
    table = report(args, sizes, conns, rows, sustained)
    print(table)
    if args.write:
        doc = ROOT / "docs" / "benchmarks.md"
        text = doc.read_text()
        block = f"{START}\n{table}{END}"
        text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S) if START in text else text.rstrip() + "\n\n" + block + "\n"
        doc.write_text(text)


def sustained_run(args, url: str, workdir: Path, body: bytes, token: str, connections: int, root: str, kind: str) -> dict:
    """wrk for ``--sustained`` seconds against the protected server; its audit rows and answered-query count beside."""
    from tracemark.serve import AuditLog

    audit = AuditLog(workdir / "audit.sqlite")
    time.sleep(0.5)  # a live server's rows reach the table within its journal interval (0.1 s)
    before = audit.count()
    result = wrk(url, body, token, args.sustained, connections, root, kind)
    time.sleep(0.5)
    metrics = httpx.get(f"{url}/metrics").text
    # per client with the admin token, one sum without it: either way the total
    answered = sum(float(m.group(1)) for m in re.finditer(r"^tracemark_queries_answered_total(?:\{[^}]*\})? (\S+)$", metrics, re.M))
    return {**result, "before": before, "rows_total": audit.count(), "answered": int(answered)}


def report(args, sizes: list[str], conns: list[int], rows: dict[tuple[str, str, int], list[dict]], sustained: dict | str) -> str:
    """The markdown section: the comparison table, then the sustained run (a string: why there is none)."""
    def med(kind: str, size: str, c: int, key: str) -> float:
        return statistics.median(r[key] for r in rows[kind, size, c])

    def ratio(size: str, c: int, key: str, base: str = "bare") -> float:
        return statistics.median(p[key] / b[key] for p, b in zip(rows["protected", size, c], rows[base, size, c]))

    def per_round(base: str) -> str:
        return "; ".join(f"{size} ×{c}: " + ", ".join(f"{p['p50'] / b['p50']:.2f}" for p, b in zip(rows["protected", size, c], rows[base, size, c]))
                         for size in sizes for c in conns)

    errors = sum(r["non2xx"] + r["socket_errors"] for runs in rows.values() for r in runs)
    described = {"toy": "toy: digits small CNN, 1×8×8, ~0.06 ms a forward pass",
                 "mid": "mid: 1.7M-parameter CNN, 1×28×28, ~1.2 ms a forward pass",
                 "large": "large: 7.5M-parameter CNN, 1×28×28, ~5 ms a forward pass",
                 "resnet": "resnet: ResNet-18 (11M parameters), 3×32×32, ~12 ms a forward pass, .npy bodies"}
    lines = [
        "## Protected serving (capability 8)",
        "",
        f"Command: `python bench/serving.py --models {','.join(sizes)} --rounds {args.rounds} --seconds {args.seconds} "
        f"--batch {args.batch} --connections {args.connections} --sustained {args.sustained} --write`; machine: {_machine()} "
        f"(1-minute load average {args.load_at_start:.1f} at the start); date: {date.today().isoformat()}; Python {platform.python_version()}.",
        "",
        f"`wrk -t1` with {' and '.join(map(str, conns))} connection(s) over loopback, POST of a batch of {args.batch} input(s) as JSON "
        "(resnet: as a float32 .npy file, `Content-Type: application/x-npy`, which the bare server reads with `np.load`) "
        "(one uvicorn worker, one torch thread per server). *Bare*: the same model behind a plain FastAPI endpoint (parse, "
        "infer, labels), what a team would otherwise deploy. *Lean*: the same work behind tracemark's plain ASGI predict "
        "endpoint, with no protection at all. *Protected*: `tracemark.serve` — API key check (cached, revocations seen on the next "
        "request), body-size guard, shape/dtype/range/NaN checks, token bucket, output policy, one audit row per input (journal "
        "append per request, imported into SQLite WAL in batches), metrics; its predict path is the lean endpoint, the "
        f"other routes FastAPI. Rounds of {args.seconds} s rotate the order of the three servers; ratios are per round, "
        f"median over {args.rounds} rounds. Bar (issue 6): protected ÷ bare p50 ≤ 1.10; protected ÷ lean is the cost of "
        "the protection alone.",
        "",
        "| model | connections | server | p50 latency (ms) | p99 latency (ms) | throughput (req/s) |",
        "|---|---|---|---|---|---|",
    ]
    for size in sizes:
        for c in conns:
            lines += [f"| {described.get(size, size)} | {c} | {kind} | {med(kind, size, c, 'p50') * 1e3:.2f} | "
                      f"{med(kind, size, c, 'p99') * 1e3:.2f} | {med(kind, size, c, 'rps'):.0f} |" for kind in KINDS]
            lines.append(f"| | | **protected ÷ bare** | **{ratio(size, c, 'p50'):.2f}×** | {ratio(size, c, 'p99'):.2f}× | "
                         f"{ratio(size, c, 'rps'):.2f}× |")
            lines.append(f"| | | protected ÷ lean | {ratio(size, c, 'p50', 'lean'):.2f}× | {ratio(size, c, 'p99', 'lean'):.2f}× | "
                         f"{ratio(size, c, 'rps', 'lean'):.2f}× |")
    lines += ["", f"Per-round p50 ratios, protected ÷ bare: {per_round('bare')}. Protected ÷ lean: {per_round('lean')}. "
              f"Errors in the comparison runs: {errors}.", ""]
    if isinstance(sustained, str):
        return "\n".join(lines + [f"Sustained run: {sustained}.", ""])
    rows_total, answered = sustained["rows_total"], sustained["answered"]
    lines += [
        f"Sustained: {args.sustained} s against the protected {sizes[0]} server: {sustained['requests']} requests "
        f"({sustained['rps']:.0f}/s, p50 {sustained['p50'] * 1e3:.2f} ms, p99 {sustained['p99'] * 1e3:.2f} ms), "
        f"{sustained['non2xx']} non-2xx, {sustained['socket_errors']} socket errors. Audit log: {rows_total} rows in total = "
        f"{answered} queries the server answered ({'equal' if rows_total == answered else 'MISMATCH'}); "
        f"{rows_total - sustained['before']} rows for the sustained run, wrk counted {sustained['requests'] * args.batch} answered "
        f"queries (wrk stops without counting up to {max(conns)} requests still in flight).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
