"""Protected serving vs the same model behind a bare FastAPI endpoint, loopback, side by side.

    python bench/serving.py [--rounds 5] [--seconds 10] [--batch 1] [--connections 4] [--sustained 60]

Each server is its own uvicorn process (one worker, one torch thread); `wrk` (Debian package
`wrk`) drives it. Rounds alternate bare/protected so that background load hits both alike;
ratios are protected/bare per round, then the median. A final sustained run against the
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
def _model():
    import tracemark as tm

    return tm.build_model("small_cnn", (1, 8, 8), 10, seed=0).eval()


def bare_app():
    """The same model behind a plain FastAPI endpoint: parse, infer, answer labels. No protection."""
    import numpy as np

    from tracemark.serve.model import from_module

    served = from_module(_model())
    app = FastAPI()

    @app.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        body = await request.body()

        def work() -> dict:
            x = np.asarray(json.loads(body)["inputs"], dtype=np.float32)
            return {"labels": served.probabilities(x).argmax(axis=1).tolist()}

        return JSONResponse(await run_in_threadpool(work))

    return app


def protected_app(workdir: str):
    from tracemark.serve import ServeConfig, create_app, from_module

    config = ServeConfig(model="bench", clients_db=f"{workdir}/clients.sqlite", audit_db=f"{workdir}/audit.sqlite",
                         rate=1e9, burst=1e9)
    return create_app(from_module(_model()), config)


def run_server(kind: str, port: int, workdir: str) -> None:
    import torch
    import uvicorn

    torch.set_num_threads(1)
    app = bare_app() if kind == "bare" else protected_app(workdir)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(kind: str, workdir: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(port), "--dir", workdir])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/docs", timeout=1.0)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{kind} server did not start")


# ----------------------------------------------------------------------------- load
def _seconds(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def wrk(url: str, body: str, token: str | None, seconds: int, connections: int, workdir: str) -> dict:
    script = Path(workdir) / "post.lua"
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body)}"]
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
    parser.add_argument("--serve", choices=["bare", "protected"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--dir")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--sustained", type=int, default=60)
    parser.add_argument("--write", action="store_true", help="Write the table into docs/benchmarks.md.")
    args = parser.parse_args()
    if args.serve:
        run_server(args.serve, args.port, args.dir)
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    import numpy as np

    from tracemark.serve import AuditLog, ClientStore

    workdir = tempfile.mkdtemp(prefix="tracemark-bench-")
    token = ClientStore(f"{workdir}/clients.sqlite").add("bench").token
    body = json.dumps({"inputs": np.random.default_rng(0).random((args.batch, 1, 8, 8)).round(4).tolist()})
    servers = {kind: start(kind, workdir) for kind in ("bare", "protected")}
    try:
        rows: dict[str, list[dict]] = {"bare": [], "protected": []}
        for r in range(args.rounds):
            order = ("bare", "protected") if r % 2 == 0 else ("protected", "bare")
            for kind in order:
                rows[kind].append(wrk(servers[kind][1], body, token if kind == "protected" else None, args.seconds,
                                      args.connections, workdir))
        audit = AuditLog(f"{workdir}/audit.sqlite")
        before = audit.count()
        sustained = wrk(servers["protected"][1], body, token, args.sustained, args.connections, workdir)
        time.sleep(0.5)
        metrics = httpx.get(f"{servers['protected'][1]}/metrics").text
        answered = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                       if line.startswith("tracemark_queries_answered_total{"))
        rows_total = audit.count()
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=10)
    table = report(args, rows, sustained, before, rows_total, int(answered))
    print(table)
    if args.write:
        doc = ROOT / "docs" / "benchmarks.md"
        text = doc.read_text()
        block = f"{START}\n{table}{END}"
        text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S) if START in text else text.rstrip() + "\n\n" + block + "\n"
        doc.write_text(text)


def report(args, rows: dict[str, list[dict]], sustained: dict, before: int, rows_total: int, answered: int) -> str:
    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[kind])

    ratio = {key: statistics.median(p[key] / b[key] for p, b in zip(rows["protected"], rows["bare"])) for key in ("p50", "p99", "rps")}
    errors = sum(r["non2xx"] + r["socket_errors"] for kind in rows for r in rows[kind])
    sustained_rows = rows_total - before
    per_round = ", ".join(f"{p['p50'] / b['p50']:.2f}" for p, b in zip(rows["protected"], rows["bare"]))
    lines = [
        "## Protected serving (capability 8)",
        "",
        f"Command: `python bench/serving.py --rounds {args.rounds} --seconds {args.seconds} --batch {args.batch} "
        f"--connections {args.connections} --sustained {args.sustained} --write`; machine: {_machine()} (shared with other work); "
        f"date: {date.today().isoformat()}; Python {platform.python_version()}.",
        "",
        f"`wrk -t1 -c{args.connections}` over loopback, POST of a batch of {args.batch} digits-shaped input(s) (1×8×8) to a small CNN "
        "(one uvicorn worker, one torch thread per server). *Bare*: the same model behind a plain FastAPI endpoint (parse, infer, "
        "labels). *Protected*: `tracemark.serve` — API key lookup (SQLite), body-size guard, shape/dtype/range/NaN checks, token "
        "bucket, output policy, one audit row per input (SQLite WAL, synchronous=NORMAL), metrics. Rounds of "
        f"{args.seconds} s alternate bare/protected; ratios are protected ÷ bare per round, median over {args.rounds} rounds. "
        "Bar: p50 ratio ≤ 1.10.",
        "",
        "| server | p50 latency (ms) | p99 latency (ms) | throughput (req/s) |",
        "|---|---|---|---|",
        *(f"| {kind} | {med(kind, 'p50') * 1e3:.2f} | {med(kind, 'p99') * 1e3:.2f} | {med(kind, 'rps'):.0f} |" for kind in ("bare", "protected")),
        f"| **protected ÷ bare** | **{ratio['p50']:.2f}×** | {ratio['p99']:.2f}× | {ratio['rps']:.2f}× |",
        "",
        f"Per-round p50 ratios: {per_round}; "
        f"errors in the comparison runs: {errors}.",
        "",
        f"Sustained: {args.sustained} s against the protected server: {sustained['requests']} requests "
        f"({sustained['rps']:.0f}/s, p50 {sustained['p50'] * 1e3:.2f} ms, p99 {sustained['p99'] * 1e3:.2f} ms), "
        f"{sustained['non2xx']} non-2xx, {sustained['socket_errors']} socket errors. Audit log: {rows_total} rows in total = "
        f"{answered} queries the server answered ({'equal' if rows_total == answered else 'MISMATCH'}); "
        f"{sustained_rows} rows for the sustained run, wrk counted {sustained['requests'] * args.batch} answered queries "
        f"(wrk stops without counting up to {args.connections} requests still in flight).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
