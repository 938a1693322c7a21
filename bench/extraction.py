"""Extraction resistance on real MNIST / Fashion-MNIST: ART's thieves against the real HTTP server.

One protected server per victim (response marking at the default rate and per-client budget with a marking profile
calibrated on the victim's training images, stealing monitor at default thresholds) serves the victim on loopback. Every thief and honest client is its own API client; "without marking" clients have
their marking rate set to 0, so both columns come from the same server, model and query pools. ART's
CopycatCNN / KnockoffNets query through a BlackBoxClassifier over ``HttpTarget``; each clone is then checked
against every client's marked answers (``check_clone``), once with its scores (rank test) and once with
labels only (label test). Honest clients ask natural in-domain images.

    nice -n 10 .venv/bin/python bench/extraction.py            # full run → docs/benchmarks.md
    .venv/bin/python bench/extraction.py --budgets 1000 --no-write   # quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

import tracemark as tm
from _common import ROOT, machine, trained_model, write_section
from tracemark.attacks import ArtExtract, ThiefData
from tracemark.extraction import MonitorSettings, ResponseStore, check_clone
from tracemark.extraction.marking import ENV_SECRET
from tracemark.extraction.profile import MarkingProfile
from tracemark.extraction.settings import DEFAULT_BOOST, DEFAULT_CAP, DEFAULT_RATE
from tracemark.package.licence import OutputPolicy
from tracemark.serve import ServeConfig, create_app, from_module
from tracemark.targets.base import Answers, Target

VICTIM_TRAIN = 40_000
"""The victim trains on the first 40,000 training images; the other 20,000 are the thief's in-domain pool."""
ATTACKS = {
    # name: (victim dataset, method, output, query pool)
    "copycat-label-in": ("mnist", "copycat", "label", "in"),
    "knockoff-probs-in": ("mnist", "knockoff", "probabilities", "in"),
    "copycat-label-ood": ("mnist", "copycat", "label", "ood"),
    "copycat-label-ood-rev": ("fashion-mnist", "copycat", "label", "ood"),
}
OUT = ROOT / "bench" / "out" / "extraction.json"
EXTRA_RUNS = "extraction-extra-*.json"
"""Further runs (other rates or profiles) shown under the main table: ``--out bench/out/extraction-extra-NAME.json``."""
MONITOR_OUT = ROOT / "bench" / "out" / "extraction-monitor.json"


class LabelsOnly(Target):
    """A suspect seen through a label-only API."""

    def __init__(self, inner: Target) -> None:
        self.inner, self.description, self.num_classes = inner, f"{inner} (labels only)", inner.num_classes

    def _answer(self, x: np.ndarray) -> Answers:
        return Answers(self.inner.predict(x).labels)


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """The app on an ephemeral 127.0.0.1 port in a thread."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def victim_for(name: str, epochs: int) -> tuple[torch.nn.Module, tm.ImageData, np.ndarray, np.ndarray]:
    """The victim trained on the first 40k images of ``name``, its data, and the held-out 20k (pool, labels)."""
    data = tm.load_dataset(name)
    train = dataclasses.replace(data, name=f"{name}-first{VICTIM_TRAIN}", x_train=data.x_train[:VICTIM_TRAIN],
                                y_train=data.y_train[:VICTIM_TRAIN])
    model, _ = trained_model(train, "small_cnn", seed=0, epochs=epochs)
    return model.eval(), data, data.x_train[VICTIM_TRAIN:], data.y_train[VICTIM_TRAIN:]


def ask(target: Target, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    return np.concatenate([target.predict(x[i:i + batch]).labels for i in range(0, len(x), batch)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    parser.add_argument("--epochs", type=int, default=10, help="thief training epochs (ART's default is 10)")
    parser.add_argument("--victim-epochs", type=int, default=5)
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="marking rate")
    parser.add_argument("--cap", type=float, default=DEFAULT_CAP, help="per-client marking budget (marks <= cap x answered inputs)")
    parser.add_argument("--boost", type=float, default=DEFAULT_BOOST, help="marking profile's boost of unusual inputs (1: uniform rate)")
    parser.add_argument("--no-honest", action="store_true", help="skip the honest clients")
    parser.add_argument("--no-unmarked", action="store_true", help="skip the without-marking thieves")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--out", type=Path, default=OUT, help="where the rows go (JSON)")
    parser.add_argument("--save-clones", type=Path, default=None, help="also save each clone (.safetensors) here")
    parser.add_argument("--render-only", action="store_true", help=f"rewrite the docs section from {OUT.name} without running")
    parser.add_argument("--monitor-only", type=int, metavar="STREAMS", default=0,
                        help=f"only measure the monitor's alert rate on STREAMS honest and synthetic streams -> {MONITOR_OUT.name}")
    args = parser.parse_args()
    if args.monitor_only:
        torch.set_num_threads(1)
        victim, data, pool, _ = victim_for("mnist", args.victim_epochs)
        MONITOR_OUT.parent.mkdir(parents=True, exist_ok=True)
        MONITOR_OUT.write_text(json.dumps(monitor_rates(victim, np.concatenate([data.x_test, pool]), args.monitor_only), indent=1))
        print(MONITOR_OUT.read_text())
        return
    if args.render_only:
        saved = json.loads(OUT.read_text())
        write_section("extraction", render(saved["rows"], argparse.Namespace(**saved["args"]), saved["profiles"], saved["seconds"],
                                           saved["machine"]))
        return
    torch.set_num_threads(1)
    started = time.time()
    ood = {"mnist": tm.load_dataset("fashion-mnist").x_train[:20_000], "fashion-mnist": tm.load_dataset("mnist").x_train[:20_000]}
    victims = {name: victim_for(name, args.victim_epochs) for name in sorted({ATTACKS[a][0] for a in args.attacks} | {"mnist"})}
    rows: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="tm-extraction-"))
    os.environ[ENV_SECRET] = secrets.token_hex(32)  # the marking secret lives in this process only
    monitor = MonitorSettings()
    stores: dict[str, ResponseStore] = {}
    clones: list[tuple[dict[str, Any], torch.nn.Module, tm.ImageData]] = []
    profiles: dict[str, MarkingProfile] = {}
    for vname, (victim, data, pool, pool_y) in victims.items():
        # the operator's calibration: the victim's own training images, seed 0
        profiles[vname] = MarkingProfile.calibrate(data.x_train[:VICTIM_TRAIN], boost=args.boost, seed=0)
        ResponseStore(work / f"{vname}-responses.sqlite").set_profile(profiles[vname])
        config = ServeConfig(model="in-memory", clients_db=str(work / f"{vname}-clients.sqlite"), audit_db=str(work / f"{vname}-audit.sqlite"),
                             responses_db=str(work / f"{vname}-responses.sqlite"), marking=True,
                             marking_rate=args.rate, marking_cap=args.cap, monitor=monitor, rate=1e9, burst=1e9, max_batch=256, max_body_bytes=64 << 20,
                             retention_days=None)
        app = create_app(from_module(victim, vname), config)
        server = app.state.server
        stores[vname] = ResponseStore(config.responses_db)
        victim_acc = tm.accuracy(victim, data.x_test, data.y_test)
        alerts = server.hook.hooks[0]
        with serve(app) as url:
            def client(name: str, marked: bool, policy: str = "label") -> str:
                issued = server.clients.add(name, OutputPolicy(policy))
                if not marked:
                    stores[vname].set_rate(issued.client, 0.0)
                return issued.token

            def first_alert(name: str) -> str:
                hits = [a for a in alerts.raised if a.client_name == name]
                return ", ".join(f"{a.signal}@{a.queries}" for a in hits) or "no"

            # honest clients: natural in-domain images (test set, then held-out), label output
            natural = np.concatenate([data.x_test, pool])
            natural_y = np.concatenate([data.y_test, pool_y])
            for budget in [] if args.no_honest else args.budgets:
                idx = np.random.default_rng(budget).permutation(len(natural))[:budget]
                for marked in (True, False):
                    name = f"honest-{budget}-{'m' if marked else 'u'}"
                    target = tm.HttpTarget(f"{url}/v1/predict", api_key=client(name, marked), batch_size=32, num_classes=10, timeout=60)
                    served = ask(target, natural[idx])
                    own = ask(tm.TorchTarget(victim), natural[idx])
                    unusual = profiles[vname].scores(natural[idx]) > profiles[vname].threshold
                    summary = next(c for c in stores[vname].clients() if c.client_name == name)
                    rows.append({"victim": vname, "who": "honest", "budget": budget, "marking": marked,
                                 "altered": float((served != own).mean()), "unusual": float(unusual.mean()),
                                 "marked": summary.marked, "spared": summary.spared,
                                 "accuracy_served": float((served == natural_y[idx]).mean()),
                                 "accuracy_model": float((own == natural_y[idx]).mean()),
                                 "alerts": first_alert(name), "victim_accuracy": victim_acc})
                    print(rows[-1], flush=True)
            for attack_name in args.attacks:
                dataset, method, output, where = ATTACKS[attack_name]
                if dataset != vname:
                    continue
                for budget in args.budgets:
                    for marked in (True,) if args.no_unmarked else (True, False):
                        name = f"{attack_name}-{budget}-{'m' if marked else 'u'}"
                        token = client(name, marked, "probabilities" if output == "probabilities" else "label")
                        fields = {"probabilities_field": "probabilities"} if output == "probabilities" else {}
                        target = tm.HttpTarget(f"{url}/v1/predict", api_key=token, batch_size=256, num_classes=10, timeout=120, **fields)
                        attack = ArtExtract(method, pool=where, n_queries=budget, output=output, arch="small_cnn",  # type: ignore[arg-type]
                                            epochs=args.epochs, query_batch=256)
                        t0 = time.time()
                        stolen = attack.run(target, ThiefData(pool, ood_x=ood[vname], seed=budget))
                        acc = tm.accuracy(stolen.model, data.x_test, data.y_test)
                        summary = next(c for c in stores[vname].clients() if c.client_name == name)
                        row = {"victim": vname, "who": attack_name, "budget": budget, "marking": marked, "queries": stolen.info["queries"],
                               "clone_accuracy": acc, "victim_accuracy": victim_acc, "fraction": acc / victim_acc,
                               "alerts": first_alert(name), "client": name, "spared": summary.spared, "seconds": round(time.time() - t0, 1)}
                        rows.append(row)
                        clones.append((row, stolen.model, data))
                        if args.save_clones:
                            tm.save_model(stolen.model, args.save_clones / f"{name}.safetensors")
                        print(row, flush=True)
    # attribution, once every client's marks exist: Bonferroni over all clients with marks of that victim
    for row, model, _ in clones:
        store = stores[row["victim"]]
        soft = check_clone(store, tm.TorchTarget(model), alpha=1e-6)
        hard = check_clone(store, LabelsOnly(tm.TorchTarget(model)), alpha=1e-6)
        own = next((c for c in soft.clients if c.client_name == row["client"]), None)
        own_hard = next((c for c in hard.clients if c.client_name == row["client"]), None)
        row.update({
            "clients_tested": len(soft.clients),
            "named": soft.named.client_name if soft.named else None, "p": soft.clients[0].p_adjusted, "margin": soft.margin,
            "own_marked": own.marked if own else 0, "own_matches": own.matches if own else 0,
            "own_rank_sum": own.rank_sum if own else None,
            "own_p": own.p_adjusted if own else None,
            "named_label": hard.named.client_name if hard.named else None, "p_label": hard.clients[0].p_adjusted,
            "own_label_matches": own_hard.label_matches if own_hard else 0, "own_disagreed": own_hard.disagreed if own_hard else 0,
            "own_p_label": own_hard.p_adjusted if own_hard else None,
        })
        print(row, flush=True)
    shutil.rmtree(work)  # stores and client keys of this run: nothing to keep once attributed
    args.out.parent.mkdir(parents=True, exist_ok=True)
    saved_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    saved_profiles = {name: p.summary(args.rate) for name, p in profiles.items()}
    args.out.write_text(json.dumps({"machine": machine(), "args": saved_args, "profiles": saved_profiles, "rows": rows,
                                    "seconds": time.time() - started}, indent=1))
    if not args.no_write:
        write_section("extraction", render(rows, args, saved_profiles, time.time() - started, machine()))
    print(f"done in {time.time() - started:.0f} s; rows in {args.out}")


def monitor_rates(victim: torch.nn.Module, natural: np.ndarray, streams: int, length: int = 5000) -> dict[str, Any]:
    """Alerts of the default monitor on ``streams`` honest streams (random natural images, batches of 32) and as many
    synthetic JBDA-style streams (20 seed images, then rounds of ±0.05 signed steps), each ``length`` queries."""
    from tracemark.extraction import StealingMonitor
    from tracemark.serve.clients import Client

    monitor = StealingMonitor(MonitorSettings())

    def feed(name: str, x: np.ndarray) -> None:
        client = Client(f"c_{name}", name, "")
        for start in range(0, len(x), 32):
            with torch.no_grad():
                probs = torch.softmax(victim(torch.from_numpy(x[start:start + 32])), 1).numpy()
            monitor(client, x[start:start + 32], Answers(probs.argmax(1), probs))

    for i in range(streams):
        rng = np.random.default_rng(1000 + i)
        feed(f"honest{i}", natural[rng.permutation(len(natural))[:length]])
        seeds, rounds = natural[rng.permutation(len(natural))[:20]], []
        current = seeds
        rounds.append(seeds)
        while sum(len(r) for r in rounds) < length:
            current = np.clip(current + 0.05 * np.sign(rng.standard_normal(current.shape)), 0, 1).astype(np.float32)
            rounds.append(current)
        feed(f"synthetic{i}", np.concatenate(rounds)[:length])
    result: dict[str, Any] = {"streams": streams, "length": length}
    for kind in ("honest", "synthetic"):
        hits = [a for a in monitor.raised if a.client_name.startswith(kind)]
        result[kind] = {signal: sorted(a.queries for a in hits if a.signal == signal) for signal in ("prada", "volume", "coverage")}
        result[kind]["streams_alerted"] = len({a.client_name for a in hits})
    return result


def _p(p: float | None) -> str:
    return "—" if p is None else (f"{p:.1e}" if p < 0.01 else f"{p:.2f}")


def _cap(cap: float | None) -> str:
    return "none" if cap is None else f"{cap:g}"


def _spared(r: dict[str, Any]) -> str:
    return "—" if "spared" not in r or not r["marking"] else str(r["spared"])


def _named(r: dict[str, Any]) -> str:
    def who(name: str | None) -> str:
        return "none" if name is None else ("own client" if name == r["client"] else f"WRONG ({name})")

    named = who(r.get("named"))
    if r.get("named_label") != r.get("named"):
        named += f" (labels: {who(r.get('named_label'))})"
    return named


def _marks(r: dict[str, Any]) -> str:
    return (f"{r.get('own_matches', 0)}/{r.get('own_marked', 0)}, rank sum {r.get('own_rank_sum')} "
            f"(labels {r.get('own_label_matches', 0)}/{r.get('own_disagreed', 0)})")


def _bars(rows: list[dict[str, Any]]) -> str:
    honest = [r for r in rows if r["who"] == "honest" and r["marking"]]
    big = [r for r in rows if r["who"] != "honest" and r["marking"] and r["budget"] >= 5000]
    named = [r for r in big if r.get("named") == r["client"] and (r.get("own_p") or 1) <= 1e-6]
    missed = [f"{r['who']} {r['budget']:,} (p {_p(r.get('own_p'))})" for r in big if r not in named]
    wrong = [r for r in rows if r["who"] != "honest" and r.get("named") not in (None, r["client"])]
    text = ""
    if honest:
        text = (f"honest answers altered at most {100 * max(r['altered'] for r in honest):.2f}% (bar ≤ 0.5%), honest accuracy drop "
                f"at most {max(100 * (r['accuracy_model'] - r['accuracy_served']) for r in honest):.2f} points (bar ≤ 0.5); ")
    return (text + f"clones from ≥ 5,000 answers named at p ≤ 1e-6: {len(named)} of {len(big)}"
            + (f" (missed: {', '.join(missed)})" if missed else "") + f"; a wrong client named: {len(wrong)} times "
            f"(of {sum(1 for r in rows if r['who'] != 'honest')} clones, marked and unmarked)")


def render(rows: list[dict[str, Any]], args: argparse.Namespace, profiles: dict[str, dict[str, Any]], seconds: float, where: str) -> str:
    """The benchmarks.md section."""
    split = "; ".join(f"{name}: typical {100 * p['typical_rate']:.3g}%, unusual {100 * p['unusual_rate']:.3g}%"
                      for name, p in sorted(profiles.items()))
    boost = next(iter(profiles.values()))["boost"] if profiles else 1.0
    cap = getattr(args, "cap", None)
    lines = [
        "## Extraction resistance (response marking, clone attribution, stealing monitor)",
        "",
        f"`bench/extraction.py` — {where}; {seconds / 60:.0f} min. Victims: `small_cnn` trained {args.victim_epochs} epochs on the "
        f"first {VICTIM_TRAIN:,} training images; thief pool in-domain = the other 20,000 (held out), out-of-domain = 20,000 "
        "Fashion-MNIST images against the MNIST victim, and MNIST against the Fashion-MNIST victim. Thieves: IBM ART 1.20 "
        f"`CopycatCNN` / `KnockoffNets` (random sampling), `small_cnn`, {args.epochs} epochs, querying the real server over loopback "
        f"HTTP. Marking rate {args.rate:g} and per-client budget (cap) {_cap(cap)}{' (defaults)' if (args.rate, cap) == (DEFAULT_RATE, DEFAULT_CAP) else ''} "
        f"with a marking profile (boost {boost:g}, 2% of in-distribution inputs "
        f"unusual; calibrated on the victim's training images, seed 0: {split}). Monitor at default thresholds (PRADA W < 0.90, "
        "> 10,000 queries/day, class-mix TV > 0.5). Attribution: every client with marks is tested (Bonferroni over all of them; "
        "'own p' is the thief's own client); p from the rank test on the clone's scores, 'label p' from its labels only. "
        "'Own marks reproduced': served labels the clone ranks first among the other classes / marks, the rank sum "
        "(null mean 4 per mark), and label agreements / answers off the model's label. Without marking, the same thief "
        "is a client whose marking rate is 0. Honest rows: 'unusual' is the share of the client's queries above the profile's threshold. "
        "'Spared': drawn marks the budget answered honestly (typical inputs once the client's marks reached cap × its answers).",
        "",
        f"| victim | client | budget | marking (rate {args.rate:g}, cap {_cap(cap)}) | clone acc / victim | answers altered | spared | own marks reproduced | own p (scores) | own p (labels) | client named | monitor alert (signal@queries) |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        if r["who"] == "honest":
            drop = 100 * (r["accuracy_model"] - r["accuracy_served"])
            lines.append(f"| {r['victim']} | honest (natural images; {100 * r['unusual']:.1f}% unusual) | {r['budget']:,} | "
                         f"{'on' if r['marking'] else 'off'} | served acc {100 * r['accuracy_served']:.2f}% (−{drop:.2f} pt) | "
                         f"{100 * r['altered']:.2f}% | {_spared(r)} | — | — | — | — | {r['alerts']} |")
            continue
        marks = _marks(r) if r["marking"] else "—"
        lines.append(f"| {r['victim']} | {r['who']} | {r['budget']:,} | {'on' if r['marking'] else 'off'} | {r['fraction']:.3f} | "
                     f"{100 * r.get('own_marked', 0) / r['queries']:.2f}% | {_spared(r)} | {marks} | {_p(r.get('own_p')) if r['marking'] else '—'} | "
                     f"{_p(r.get('own_p_label')) if r['marking'] else '—'} | {_named(r)} | {r['alerts']} |")
    lines += ["", f"Against issue 7's bars: {_bars(rows)}."]
    for extra in sorted(OUT.parent.glob(EXTRA_RUNS)):
        doc = json.loads(extra.read_text())
        a = doc["args"]
        budget = (f"cap {_cap(a['cap'])}" if "cap" in a else "no budget (a run from before the budget existed)")
        cap_flag = f" --cap {_cap(a['cap'])}" if "cap" in a else ""
        lines += ["", f"Same thieves at marking rate {a['rate']:g}, {budget}, boost {a['boost']:g} (`--rate {a['rate']:g}{cap_flag} --boost {a['boost']:g} "
                  f"--budgets {' '.join(map(str, a['budgets']))} --attacks {' '.join(a['attacks'])} --no-unmarked"
                  f"{' --no-honest' if a.get('no_honest') else ''} --out {extra.relative_to(ROOT)}`; a separate server and marking "
                  f"secret, so other marks and Bonferroni over fewer clients): {_bars(doc['rows'])}.", "",
                  "| victim | client | budget | clone acc / victim | answers altered | own marks reproduced | own p (scores) | own p (labels) | client named |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in doc["rows"]:
            if r["who"] == "honest":
                if r["marking"]:
                    drop = 100 * (r["accuracy_model"] - r["accuracy_served"])
                    lines.append(f"| {r['victim']} | honest | {r['budget']:,} | served acc −{drop:.2f} pt | {100 * r['altered']:.2f}% | — | — | — | — |")
                continue
            lines.append(f"| {r['victim']} | {r['who']} | {r['budget']:,} | {r['fraction']:.3f} | {100 * r['own_marked'] / r['queries']:.2f}% | "
                         f"{_marks(r)} | {_p(r['own_p'])} | {_p(r['own_p_label'])} | {_named(r)} (of {r['clients_tested']}) |")
    if MONITOR_OUT.is_file():
        m = json.loads(MONITOR_OUT.read_text())
        lines += ["", f"Monitor false-alarm rate (`--monitor-only {m['streams']}`, default thresholds, streams of {m['length']:,} queries "
                  "fed to the monitor hook directly, MNIST victim):", "",
                  "| stream | streams alerted | prada alerts (at query) | coverage alerts | volume alerts |", "|---|---:|---|---|---|"]
        for kind, text in (("honest", "honest: random natural MNIST images"), ("synthetic", "synthetic: 20 seeds + ±0.05 signed steps (JBDA-like)")):
            r = m[kind]
            lines.append(f"| {text} | {r['streams_alerted']} / {m['streams']} | {len(r['prada'])} {r['prada'][:5]} | "
                         f"{len(r['coverage'])} | {len(r['volume'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
