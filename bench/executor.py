"""Executor benchmark (issue 20): customer copies on a local pool and on Ray, and ``trace`` among 10,000 customers.

On digits (the bundled set; small_cnn base, 15 epochs, a content key):

* (a) ``--copies`` customer copies made by ``fanout`` on the local pool (``--workers`` processes),
  each registered in a customer registry as it completes; wall time and copies per second. The
  copy kind is ``--kind weight`` (the weight code and a single head step: the cheap kind, what
  1,000 customers are made with here) or ``--kind full`` (the black-box code fine-tuned in, the
  digits settings of the tests).
* (b) ``--compare`` copies on a Ray started on this machine with the same number of CPUs vs the
  local pool, the fastest of ``--rounds`` runs on each; Ray's start-up is timed apart; the ratio is
  of the fan-out wall times (feature cache included in both) and the files are checked byte for byte.
* (c) ``trace`` among ``--registry`` registered customers (registered in one transaction, timed):
  a fully coded copy of one of them traced (``TorchTarget``, 100 queries); the black-box scoring
  alone (label matrix + binomial tails over every customer) timed apart, and the weight test
  (``--base``) over every customer.

Results go to bench/out/executor.json and the "executor" section of docs/benchmarks.md.

    nice -n 10 .venv/bin/python bench/executor.py                       # 1,000 copies, 200 compared, 10,000 customers
    nice -n 10 .venv/bin/python bench/executor.py --copies 200 --compare 100
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

import tracemark as tm
from _common import ROOT, machine, trained_model, write_section
from tracemark._util.files import atomic_write_text
from tracemark.executor import LocalExecutor, RayExecutor
from tracemark.fingerprint import CodeGoalWarning, FingerprintScheme, Registry, TrainSettings, fanout, mark_customer
from tracemark.fingerprint.trace import score_answers, trace
from tracemark.fingerprint.weights import weight_trace

OUT = ROOT / "bench" / "out" / "executor.json"
KINDS = {
    # the weight code, then one head step (the goal is met at the first check): cheap copies
    "weight": TrainSettings(max_steps=1, eval_every=1, target_code_accuracy=0.0, max_clean_drop=0.02),
    # the black-box code fine-tuned in, as the digits tests do
    "full": TrainSettings(lr=3e-3, max_steps=3000, target_code_accuracy=0.45, max_clean_drop=0.02),
}


def _copies(base, scheme, ids, data, folder: Path, settings: TrainSettings, executor, registry: Registry | None) -> dict:
    on_copy = None if registry is None else (
        lambda r: registry.set_copy(r.customer, r.model_path, r.model_sha256, r.to_dict()))
    start = time.perf_counter()
    made = fanout(base, scheme, ids, data, folder, settings=settings, executor=executor, on_copy=on_copy)
    seconds = time.perf_counter() - start
    return {"n": len(ids), "seconds": seconds, "per_copy_s": seconds / len(ids), "workers": made.workers,
            "reached_goal": sum(c.reached_goal for c in made.copies),
            "sha256": hashlib.sha256("".join(c.model_sha256 for c in made.copies).encode()).hexdigest()}


def _warm(i: int) -> int:
    """A Ray worker's one-time start: import torch and tracemark (held a moment so each worker gets one)."""
    import importlib

    importlib.import_module("tracemark.fingerprint.fanout")
    time.sleep(1.0)
    return os.getpid()


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", CodeGoalWarning)
    data = tm.load_dataset("digits")
    base, _ = trained_model(data, "small_cnn", seed=0, epochs=15)
    key = tm.WatermarkKey.generate("content", images=data.x_train, labels=data.y_train, n_triggers=100,
                                   seed=bytes(range(32)))
    scheme = FingerprintScheme.from_key(key)
    settings = KINDS[args.kind]
    work = Path(tempfile.mkdtemp(prefix="tm-executor-bench-"))
    result: dict = {"machine": machine(), "kind": args.kind, "workers": args.workers, "load_before": os.getloadavg()[0]}
    try:
        ids = [f"customer-{i:05d}" for i in range(args.copies)]
        registry = Registry.create(work / "copies.sqlite", scheme)
        registry.add_many(scheme, ids)
        with LocalExecutor(args.workers) as pool:
            result["copies"] = _copies(base, scheme, ids, data, work / "copies", settings, pool, registry)
        result["copies"]["registered"] = sum(1 for r in registry.records() if r.model_sha256)
        print("copies", result["copies"], flush=True)

        compared = [f"customer-{i:05d}" for i in range(args.compare)]
        with LocalExecutor(args.workers) as pool:  # best of --rounds each: the cores are shared with other work
            local = min((_copies(base, scheme, compared, data, work / "local", settings, pool, None)
                         for _ in range(args.rounds)), key=lambda r: r["seconds"])
        start = time.perf_counter()
        with RayExecutor(workers=args.workers) as ray_pool:
            ray_pool.map(_warm, range(args.workers))
            ray_start = time.perf_counter() - start
            on_ray = min((_copies(base, scheme, compared, data, work / "ray", settings, ray_pool, None)
                          for _ in range(args.rounds)), key=lambda r: r["seconds"])
        result["compare"] = {"local": local, "ray": on_ray, "ray_start_s": ray_start, "rounds": args.rounds,
                             "ratio": on_ray["seconds"] / local["seconds"],
                             "identical": local["sha256"] == on_ray["sha256"]}
        print("compare", result["compare"], flush=True)

        customers = [f"customer-{i:05d}" for i in range(args.registry)]
        big = Registry.create(work / "big.sqlite", scheme)
        start = time.perf_counter()
        big.add_many(scheme, customers)
        register_s = time.perf_counter() - start
        leaker = customers[len(customers) // 2]
        suspect, _ = mark_customer(base, scheme, leaker, data, settings=KINDS["full"])
        names = big.customers()
        start = time.perf_counter()
        found = trace(scheme, names, tm.TorchTarget(suspect))
        trace_s = time.perf_counter() - start
        answers = tm.TorchTarget(suspect).predict_labels(scheme.queries.inputs)
        start = time.perf_counter()
        score_answers(scheme, names, answers)
        score_s = time.perf_counter() - start
        start = time.perf_counter()
        weights = weight_trace(scheme, names, suspect, base, alpha=1e-9 / 2)
        weights_s = time.perf_counter() - start
        result["trace"] = {"customers": len(names), "register_s": register_s, "trace_s": trace_s, "score_s": score_s,
                           "weights_s": weights_s, "verdict": found.verdict, "named": found.customer,
                           "right": found.customer == leaker, "weights_named": weights.accused[:1]}
        print("trace", result["trace"], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["load_after"] = os.getloadavg()[0]
    return result


def section(r: dict) -> str:
    c, cmp, t = r["copies"], r["compare"], r["trace"]
    kind = ("weight code + one head step" if r["kind"] == "weight" else "black-box code fine-tuned in (digits settings)")
    return "\n".join([
        "## Executors: customer copies on a local pool and on Ray, trace among many customers",
        "",
        f"Machine: {r['machine']}; shared with other jobs (load average {r['load_before']:.1f} before the run, "
        f"{r['load_after']:.1f} after), so per-copy times vary from run to run. Digits, small_cnn base; copies of "
        f"kind *{r['kind']}* ({kind}). Run with `bench/executor.py` (see its docstring); the N below are what this "
        "run made.",
        "",
        "| measure | N | seconds | per item | note |",
        "|---|---:|---:|---:|---|",
        f"| (a) customer copies, local pool ({c['workers']} workers), each registered as it completes | {c['n']:,} | "
        f"{c['seconds']:.1f} | {1000 * c['per_copy_s']:.0f} ms | {c['registered']:,} registered, "
        f"{c['reached_goal']:,} reached their goal |",
        f"| (b) the first of them again, local pool ({cmp['local']['workers']} workers), best of {cmp['rounds']} | {cmp['local']['n']:,} | "
        f"{cmp['local']['seconds']:.1f} | {1000 * cmp['local']['per_copy_s']:.0f} ms | |",
        f"| (b) the same copies, Ray on the same {cmp['ray']['workers']} CPUs, best of {cmp['rounds']} | {cmp['ray']['n']:,} | "
        f"{cmp['ray']['seconds']:.1f} | {1000 * cmp['ray']['per_copy_s']:.0f} ms | **{cmp['ratio']:.2f}×** the local "
        f"pool; files {'byte-identical' if cmp['identical'] else 'DIFFERENT'}; Ray start-up {cmp['ray_start_s']:.1f} s "
        "apart |",
        f"| (c) register customers (one transaction) | {t['customers']:,} | {t['register_s']:.2f} | | |",
        f"| (c) `trace` (100 queries, black-box test) | {t['customers']:,} | {t['trace_s']:.2f} | | "
        f"{'named the right customer' if t['right'] else 'verdict ' + t['verdict']} |",
        f"| (c) black-box scoring alone | {t['customers']:,} | {t['score_s']:.2f} | | label matrix + binomial tails |",
        f"| (c) weight test (`trace --base`) | {t['customers']:,} | {t['weights_s']:.2f} | | "
        f"named {', '.join(t['weights_named']) or 'nobody'} |",
        "",
        "The ratio in (b) includes the feature cache computed once in the driver and each Ray worker fetching the "
        "shared base, data and cache once; Ray's start-up (its workers importing torch and tracemark once) is timed "
        "apart: a cluster's workers outlive one fan-out.",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=1000, help="(a) copies made on the local pool")
    parser.add_argument("--compare", type=int, default=200, help="(b) copies made on both the local pool and Ray")
    parser.add_argument("--registry", type=int, default=10_000, help="(c) customers registered for trace")
    parser.add_argument("--rounds", type=int, default=2, help="(b) runs on each executor; the fastest is kept")
    parser.add_argument("--kind", choices=sorted(KINDS), default="weight")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    result = run(args)
    atomic_write_text(OUT, json.dumps(result, indent=2) + "\n")
    if not args.no_docs:
        write_section("executor", section(result))


if __name__ == "__main__":
    main()
