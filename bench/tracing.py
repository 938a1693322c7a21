"""Tracing benchmark (capability 5): per-customer copies of an MNIST / Fashion-MNIST CNN, and which customer leaked.

Per dataset: the owner's small CNN (3 epochs on the first 50,000 training images; the thief holds
the other 10,000), a content key, and 100 customer copies made by ``fanout`` with 2 worker
processes (timed). Then, with 1,000 registered customers (the 100 with copies and 900 without)
and at most 100 queries each:

* identification: every copy traced; the right customer must be the only one named;
* false accusations: every copy traced against a registry without its customer, the 20
  independent models of the robustness lab's null profile, and the base;
* attacks: the lab's fine-tuning (FTLL, FTAL, RTLL, RTAL at lr 5e-4; FTAL, RTAL at 2e-3; 5 epochs
  on the thief's 10,000 images) and pruning sweeps on a few copies; traced where the thief stays
  within 2 points of the copy's accuracy;
* collusion: pairs and triples of customers averaging their weights or their answers.

Results go to bench/out/tracing/<dataset>.json and the "tracing" section of docs/benchmarks.md.

    nice -n 10 .venv/bin/python bench/tracing.py --datasets mnist
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import numpy as np
import torch

import tracemark as tm
from _common import CACHE, ROOT, machine, trained_model, write_section
from tracemark.attacks import FineTune, Prune
from tracemark.data.datasets import ImageData
from tracemark.fingerprint import FingerprintScheme, Registry, TraceResult, TrainSettings, fanout, trace
from tracemark.lab.protocol import DEFAULT_BUDGET_POINTS, target_accuracy
from tracemark.lab.victim import split_thief

OUT = ROOT / "bench" / "out" / "tracing"
KEY_SEED = b"tracemark-bench-fingerprint-key!"


def attacks(thief_size: int) -> list:
    """The lab's standard fine-tuning and pruning attacks (lab.suite.make_suite 'standard')."""
    out = [FineTune(mode, n_samples=thief_size, epochs=5, lr=5e-4) for mode in ("FTLL", "FTAL", "RTLL", "RTAL")]
    out += [FineTune("FTAL", n_samples=thief_size, epochs=5, lr=2e-3), FineTune("RTAL", n_samples=thief_size, epochs=5, lr=2e-3)]
    out += [Prune(r, "magnitude") for r in (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)]
    out += [Prune(r, "random") for r in (0.05, 0.1, 0.2, 0.3, 0.5)]
    return out


def brief(result: TraceResult) -> dict:
    best = result.best
    return {"verdict": result.verdict, "accused": result.accused, "best": best.customer, "matches": best.matches,
            "informative": best.informative, "log10_p": best.log10_p, "p_adjusted": best.p_adjusted,
            "margin_log10": result.margin_log10, "queries": result.queries, "seconds": result.seconds}


_STATE: dict = {}


def _attack_one(job: tuple[str, int]) -> dict:
    torch.set_num_threads(1)
    customer, index = job
    s = _STATE
    attack = s["attacks"][index]
    model = tm.load_model(s["copies"][customer])
    marked = tm.accuracy(model, *s["test"])
    start = time.perf_counter()
    stolen = attack.run(model, s["thief"])
    acc = target_accuracy(stolen.target, *s["test"])
    result = trace(s["scheme"], s["registry"], stolen.target, alpha=s["alpha"])
    drop = 100 * (marked - acc)
    return {"customer": customer, "attack": attack.name, "thief_accuracy": acc, "drop_points": drop,
            "within_budget": drop <= DEFAULT_BUDGET_POINTS, "right": result.accused == [customer],
            "false": [c for c in result.accused if c != customer], "seconds": time.perf_counter() - start,
            **brief(result)}


def run(name: str, args: argparse.Namespace, command: str) -> dict:
    torch.set_num_threads(1)
    data = tm.load_dataset(name)
    owner, thief = split_thief(data, 10000, seed=1)
    owner = ImageData(f"{name}-owner50k", owner.x_train, owner.y_train, owner.x_test, owner.y_test, owner.num_classes)
    test = (owner.x_test, owner.y_test)
    base, record = trained_model(owner, "small_cnn", 0, 3)
    key = tm.WatermarkKey.generate("content", images=owner.x_train, labels=owner.y_train, n_triggers=100, seed=KEY_SEED)
    scheme = FingerprintScheme.from_key(key)
    folder = OUT / name
    copies_dir = folder / "copies"
    customers = [f"customer-{i:04d}" for i in range(args.registry_size)]
    with_copies = customers[: args.customers]
    settings = TrainSettings(seed=0)
    registry_path = folder / "registry.sqlite"
    if registry_path.exists():
        registry_path.unlink()
    registry = Registry.create(registry_path, scheme)
    for c in customers:
        registry.add(scheme, c)
    result: dict = {"dataset": name, "command": command, "machine": machine(), "base": {**record, "test_accuracy": tm.accuracy(base, *test)},
                    "settings": settings.__dict__, "registry_size": len(customers), "customers_with_copies": len(with_copies),
                    "alpha": args.alpha, "queries": scheme.n_cells}

    print(f"[{name}] making {len(with_copies)} copies with {args.workers} workers", flush=True)
    made = fanout(base, scheme, with_copies, owner, copies_dir, workers=args.workers, settings=settings,
                  on_copy=lambda r: registry.set_copy(r.customer, r.model_path, r.model_sha256, r.to_dict()),
                  show_progress=args.progress)
    changes = [100 * (c.clean_accuracy_after - c.clean_accuracy_before) for c in made.copies]
    result["fanout"] = {"seconds": made.seconds, "workers": made.workers, "reached_goal": sum(c.reached_goal for c in made.copies),
                        "steps_median": float(np.median([c.steps for c in made.copies])),
                        "code_accuracy_min": min(c.code_accuracy for c in made.copies),
                        "clean_change_points": [min(changes), float(np.median(changes)), max(changes)],
                        "seconds_per_copy_median": float(np.median([c.seconds for c in made.copies]))}
    print(f"[{name}] fan-out: {result['fanout']}", flush=True)
    copies = {c.customer: c.model_path for c in made.copies}

    # identification among 1,000 and among the 100 with copies
    ident = {"1000": [], "100": []}
    for c in with_copies:
        target = tm.TorchTarget(tm.load_model(copies[c]), description=c)
        for label, reg in (("1000", customers), ("100", with_copies)):
            r = trace(scheme, reg, target, alpha=args.alpha, max_queries=100)
            ident[label].append({"customer": c, "right": r.accused == [c], **brief(r)})
    result["identification"] = {k: {"trials": len(v), "right": sum(x["right"] for x in v),
                                    "false_accusations": sum(len([a for a in x["accused"] if a != x["customer"]]) > 0 for x in v),
                                    "min_log10_p": max(x["log10_p"] for x in v),
                                    "min_margin_log10": min(x["margin_log10"] for x in v),
                                    "trace_seconds_median": float(np.median([x["seconds"] for x in v]))}
                                for k, v in ident.items()}
    print(f"[{name}] identification: {result['identification']}", flush=True)

    # false accusations: copies against a registry without their customer, independent models, the base
    trials = []
    for c in with_copies:
        reg = [x for x in customers if x != c]
        r = trace(scheme, reg, tm.TorchTarget(tm.load_model(copies[c])), alpha=args.alpha)
        trials.append({"suspect": f"copy of unregistered {c}", **brief(r)})
    null_dir = CACHE / f"null-{name}"
    independents = sorted(null_dir.glob("*.safetensors"))
    for path in independents:
        r = trace(scheme, customers, tm.load_target(path), alpha=args.alpha)
        trials.append({"suspect": path.stem, **brief(r)})
    r = trace(scheme, customers, tm.TorchTarget(base), alpha=args.alpha)
    trials.append({"suspect": "base (never shipped)", **brief(r)})
    result["false_accusations"] = {"trials": len(trials), "accusations": sum(bool(t["accused"]) for t in trials),
                                   "independent_models": len(independents), "other_copies": len(with_copies),
                                   "smallest_p_adjusted": min(t["p_adjusted"] for t in trials)}
    print(f"[{name}] false accusations: {result['false_accusations']}", flush=True)

    # collusion: averaging weights or answers
    rng = np.random.default_rng(0)
    collusion = []
    for size in (2, 3):
        for _ in range(args.collusion):
            group = list(rng.choice(with_copies, size=size, replace=False))
            models = [tm.load_model(copies[c]) for c in group]
            avg = copy.deepcopy(models[0])
            state = {k: sum(m.state_dict()[k] for m in models) / size for k in avg.state_dict()}
            avg.load_state_dict(state)
            weights_acc = tm.accuracy(avg, *test)

            def answers(x: np.ndarray, models=models) -> np.ndarray:
                probs = sum(tm.TorchTarget(m).predict(x).probabilities for m in models)
                return np.argmax(probs, axis=1)

            for mode, target in (("weights", tm.TorchTarget(avg, description="weight average")),
                                 ("answers", tm.CallableTarget(answers, description="answer average", num_classes=10))):
                r = trace(scheme, customers, target, alpha=args.alpha)
                collusion.append({"group": group, "mode": mode, "accused": r.accused,
                                  "colluders_named": len(set(r.accused) & set(group)),
                                  "innocents_named": len(set(r.accused) - set(group)),
                                  "accuracy": weights_acc if mode == "weights" else None, **brief(r)})
    result["collusion"] = collusion
    for size in (2, 3):
        for mode in ("weights", "answers"):
            rows = [x for x in collusion if len(x["group"]) == size and x["mode"] == mode]
            print(f"[{name}] collusion {size} {mode}: at least one named {sum(x['colluders_named'] > 0 for x in rows)}/{len(rows)}, "
                  f"innocents named {sum(x['innocents_named'] for x in rows)}", flush=True)

    # attacks on a few copies, in worker processes
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    _STATE.update(attacks=attacks(len(thief.x)), copies=copies, test=test, thief=thief, scheme=scheme,
                  registry=customers, alpha=args.alpha)
    jobs = [(c, i) for c in with_copies[: args.attack_copies] for i in range(len(_STATE["attacks"]))]
    start = time.perf_counter()
    attacked = []
    if jobs:
        with ProcessPoolExecutor(max_workers=args.workers, mp_context=multiprocessing.get_context("fork")) as pool:
            attacked = list(pool.map(_attack_one, jobs))
    result["attacks"] = attacked
    result["attack_seconds"] = time.perf_counter() - start
    for a in attacked:
        print(f"[{name}] {a['customer']} {a['attack']:45s} drop {a['drop_points']:+.2f} "
              f"{'in' if a['within_budget'] else 'OUT'} {a['verdict']} {a['best']} {a['matches']}/{a['informative']} "
              f"log10p {a['log10_p']:.1f}", flush=True)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def section(results: list[dict]) -> str:
    lines = ["## Per-customer marks and tracing (capability 5)", "",
             f"Machine: {results[0]['machine']} (shared with other jobs' experiments). Per-dataset JSON: "
             "`bench/out/tracing/<dataset>/`; commands below.", "",
             "Setup: small CNN trained 3 epochs on the first 50,000 training images (the thief holds the other 10,000). "
             "Content master key (seeded), 10 secret drawings × 10 classes = 100 cells, one query per cell. Each copy: "
             "the base's head (Linear layers) fine-tuned on features the frozen body computed once (10,000 clean + "
             "10,000 stamped training images), until 90% of the queries carry the customer's labels with at most 0.3 "
             "points lost on 2,000 test images. Tracing: exact binomial null 1/9 over the queries answered with a "
             "class other than the image's own, Bonferroni over all registered customers, alpha "
             f"{results[0]['alpha']:.0e} for the whole registry.", ""]
    for r in results:
        f, i, fa = r["fanout"], r["identification"], r["false_accusations"]
        lines += [f"### {r['dataset']}", "", f"Command: `{r.get('command', 'nice -n 10 .venv/bin/python bench/tracing.py --datasets ' + r['dataset'])}`.",
                  f"Base: {100 * r['base']['test_accuracy']:.2f}% clean. **{r['customers_with_copies']} copies in "
                  f"{f['seconds'] / 60:.1f} min** wall with {f['workers']} worker processes (median {f['seconds_per_copy_median']:.0f} s "
                  f"and {f['steps_median']:.0f} steps per copy; {f['reached_goal']} reached the goal; code accuracy ≥ "
                  f"{100 * f['code_accuracy_min']:.0f}%; clean change min/median/max {f['clean_change_points'][0]:+.2f} / "
                  f"{f['clean_change_points'][1]:+.2f} / {f['clean_change_points'][2]:+.2f} points).", "",
                  "| registry | trials | right customer, alone | false accusations | weakest p (log10) | smallest margin (orders) | trace time |",
                  "|---|---|---|---|---|---|---|"]
        for k in ("100", "1000"):
            x = i[k]
            lines.append(f"| {k} customers | {x['trials']} | {x['right']} | {x['false_accusations']} | {x['min_log10_p']:.1f} | "
                         f"{x['min_margin_log10']:.1f} | {1000 * x['trace_seconds_median']:.0f} ms |")
        lines += ["", f"False accusations: **{fa['accusations']} of {fa['trials']}** trials ({fa['other_copies']} copies traced "
                  f"against the 999 other customers, {fa['independent_models']} independent models of the lab's null profile, "
                  f"the base); smallest adjusted p {fa['smallest_p_adjusted']:.2g}.", ""]
        att = r["attacks"]
        if att:
            lines += [f"Attacks ({len({a['customer'] for a in att})} copies × {len({a['attack'] for a in att})} attacks, "
                      f"{r['attack_seconds'] / 60:.1f} min):", "",
                      "| attack | within 2 points | right customer named | Δ points | matches / informative | log10 p |", "|---|---|---|---|---|---|"]
            for name in dict.fromkeys(a["attack"] for a in att):
                rows = [a for a in att if a["attack"] == name]
                lines.append(f"| `{name}` | {sum(a['within_budget'] for a in rows)}/{len(rows)} | "
                             f"{sum(a['right'] for a in rows)}/{len(rows)} | "
                             + ", ".join(f"{-a['drop_points']:+.2f}" for a in rows) + " | "
                             + ", ".join(f"{a['matches']}/{a['informative']}" for a in rows) + " | "
                             + ", ".join(f"{a['log10_p']:.0f}" for a in rows) + " |")
            failed = [a for a in att if a["within_budget"] and not a["right"]]
            falsely = [a for a in att if a["false"]]
            lines += ["", f"Within budget but not named: {len(failed)} of {sum(a['within_budget'] for a in att)}; "
                      f"an innocent named after an attack: {len(falsely)}.", ""]
            lost = sorted({a["attack"] for a in att if a["within_budget"] and not a["right"]})
            kept = sorted({a["attack"] for a in att if a["within_budget"]} - set(lost))
            lines += [f"Named after every within-budget run of: {', '.join(f'`{x}`' for x in kept) or 'none'}. "
                      f"**Not named** (the code is removed) after: {', '.join(f'`{x}`' for x in lost) or 'none'}.", ""]
        col = r["collusion"]
        lines += ["| collusion | groups | ≥ 1 colluder named | all named | innocents named |", "|---|---|---|---|---|"]
        for size in (2, 3):
            for mode in ("weights", "answers"):
                rows = [x for x in col if len(x["group"]) == size and x["mode"] == mode]
                if rows:
                    lines.append(f"| {size} customers averaging {mode} | {len(rows)} | {sum(x['colluders_named'] > 0 for x in rows)} | "
                                 f"{sum(x['colluders_named'] == size for x in rows)} | {sum(x['innocents_named'] for x in rows)} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["mnist"])
    parser.add_argument("--customers", type=int, default=100, help="customers given a copy")
    parser.add_argument("--registry-size", type=int, default=1000, help="customers registered")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--attack-copies", type=int, default=3)
    parser.add_argument("--collusion", type=int, default=10, help="groups of each size")
    parser.add_argument("--alpha", type=float, default=1e-9)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--docs-only", action="store_true", help="only rebuild the docs section from saved results")
    args = parser.parse_args()
    command = "nice -n 10 .venv/bin/python bench/tracing.py " + " ".join(sys.argv[1:])
    for name in [] if args.docs_only else args.datasets:
        run(name, args, command)
    if not args.no_docs:
        saved = [OUT / name / f"{name}.json" for name in ("mnist", "fashion-mnist")]
        write_section("tracing", section([json.loads(p.read_text()) for p in saved if p.is_file()]))


if __name__ == "__main__":
    main()
