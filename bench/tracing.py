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

With ``--weight-code``, the white-box weight code instead (copies made with it, traced as
model files against the base's weights, the black-box test alongside with alpha split in two):
``--weight-copies`` copies made and each named among 1,000; false accusations (each copy against
the other 999 customers, the lab's independent models, head-only copies of the main run if present,
the base); the attacks on ``--attack-copies`` copies; weight averaging by 2 and 3 customers.

With ``--symmetry``, issue 17's disguised leak: weight-coded copies put through a derangement of every
hidden layer and per-unit rescaling (function unchanged), then RTLL, RTAL (lr 5e-4, 2e-3) or prune 50%
then fine-tune, traced with the weight test after alignment among 1,000 customers; innocents (other
customers' copies, unregistered weight-coded copies, independent models, the base) plain, disguised and
disguised-then-attacked. ``--quick`` runs a small version of it on digits (about 2 minutes).

With ``--rtll-code`` (issue 17, item 4), black-box codes put in the features (``TrainSettings.feature_match``,
``body_layers``) against the re-training attacks: per variant, copies made, RTLL and RTAL at lr 5e-4 and 2e-3,
traced among 1,000 customers; innocents are the attacked copies without their customer and the attacked base.
``--rtll-code --quick`` runs it on digits, one copy per variant (under 3 minutes).

Results go to bench/out/tracing/<dataset>/<dataset>[-weights|-symmetry|-rtll-code].json and the "tracing" section of
docs/benchmarks.md.

    nice -n 10 .venv/bin/python bench/tracing.py --datasets mnist
    nice -n 10 .venv/bin/python bench/tracing.py --datasets mnist --weight-code
    nice -n 10 .venv/bin/python bench/tracing.py --datasets mnist --symmetry
    nice -n 10 .venv/bin/python bench/tracing.py --quick --no-docs
    nice -n 10 .venv/bin/python bench/tracing.py --datasets mnist --rtll-code
    nice -n 10 .venv/bin/python bench/tracing.py --rtll-code --quick --no-docs
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

import tracemark as tm
from _common import CACHE, ROOT, machine, trained_model, write_section
from tracemark.attacks import FineTune, Prune
from tracemark.attacks.symmetry import permute_units, rescale_units
from tracemark.attacks.base import ThiefData
from tracemark.data.datasets import ImageData
from tracemark.fingerprint import FingerprintScheme, Registry, TraceResult, TrainSettings, fanout, trace, weight_trace
from tracemark.fingerprint.weights import add_weight_code, weight_coded_copy
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
    out = {"verdict": result.verdict, "accused": result.accused, "best": best.customer, "matches": best.matches,
           "informative": best.informative, "log10_p": best.log10_p, "p_adjusted": best.p_adjusted,
           "margin_log10": result.margin_log10, "queries": result.queries, "seconds": result.seconds}
    w = result.weights
    if w is not None:
        out["weights"] = {"applies": w.applies, "accused": w.accused, "compared": w.compared, "entries": w.entries,
                          "note": w.note, "seconds": w.seconds, "margin_log10": w.margin_log10,
                          **({"best": w.best.customer, "agreements": w.best.agreements, "log10_p": w.best.log10_p,
                              "log10_p_adjusted": w.best.log10_p_adjusted} if w.best else {})}
        threshold = math.log10(result.alpha / 2 / result.n_customers)  # each test's share of alpha
        out["black_box_accused"] = [s.customer for s in result.top if s.log10_p <= threshold]
    return out


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
    result = trace(s["scheme"], s["registry"], stolen.target, alpha=s["alpha"], base=s.get("base"))
    drop = 100 * (marked - acc)
    return {"customer": customer, "attack": attack.name, "copy_accuracy": marked, "thief_accuracy": acc, "drop_points": drop,
            "within_budget": drop <= DEFAULT_BUDGET_POINTS, "right": result.accused == [customer],
            "false": [c for c in result.accused if c != customer], "seconds": time.perf_counter() - start,
            **brief(result)}


def setup(name: str, thief_size: int = 10000, epochs: int = 3
          ) -> tuple[ImageData, ThiefData, tuple[np.ndarray, np.ndarray], torch.nn.Module, dict, FingerprintScheme]:
    """The owner's data, the thief's, the test set, the owner's base model (cached) and its record, the scheme."""
    torch.set_num_threads(1)
    data = tm.load_dataset(name)
    owner, thief = split_thief(data, thief_size, seed=1)
    tag = "owner50k" if thief_size == 10000 else f"owner-thief{thief_size}"
    owner = ImageData(f"{name}-{tag}", owner.x_train, owner.y_train, owner.x_test, owner.y_test, owner.num_classes)
    base, record = trained_model(owner, "small_cnn", 0, epochs)
    key = tm.WatermarkKey.generate("content", images=owner.x_train, labels=owner.y_train, n_triggers=100, seed=KEY_SEED)
    return owner, thief, (owner.x_test, owner.y_test), base, record, FingerprintScheme.from_key(key)


def run(name: str, args: argparse.Namespace, command: str) -> dict:
    owner, thief, test, base, record, scheme = setup(name)
    folder = OUT / name
    copies_dir = folder / "copies"
    customers = [f"customer-{i:04d}" for i in range(args.registry_size)]
    with_copies = customers[: args.customers]
    settings = TrainSettings(seed=0, weight_strength=0.0)  # the black-box code alone (see run_weights)
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
    _STATE.update(attacks=attacks(len(thief.x)), copies=copies, test=test, thief=thief, scheme=scheme,
                  registry=customers, alpha=args.alpha, base=None)
    start = time.perf_counter()
    attacked = _attack_pool([(c, i) for c in with_copies[: args.attack_copies] for i in range(len(_STATE["attacks"]))],
                            args.workers)
    result["attacks"] = attacked
    result["attack_seconds"] = time.perf_counter() - start
    for a in attacked:
        print(f"[{name}] {a['customer']} {a['attack']:45s} drop {a['drop_points']:+.2f} "
              f"{'in' if a['within_budget'] else 'OUT'} {a['verdict']} {a['best']} {a['matches']}/{a['informative']} "
              f"log10p {a['log10_p']:.1f}", flush=True)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def _attack_pool(jobs: list[tuple[str, int]], workers: int) -> list[dict]:
    """Run ``_attack_one`` over ``jobs`` in forked processes (``_STATE`` must be set)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if not jobs:
        return []
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_attack_one, jobs))


def run_weights(name: str, args: argparse.Namespace, command: str) -> dict:
    """The weight code: copies made with it, traced as model files against the base (both tests, alpha split)."""
    owner, thief, test, base, record, scheme = setup(name)
    folder = OUT / name
    customers = [f"customer-{i:04d}" for i in range(args.registry_size)]
    with_copies = customers[: args.weight_copies]
    settings = TrainSettings(seed=0)
    result: dict = {"dataset": name, "command": command, "machine": machine(), "date": time.strftime("%Y-%m-%d", time.gmtime()),
                    "base": {**record, "test_accuracy": tm.accuracy(base, *test)}, "settings": settings.__dict__,
                    "registry_size": len(customers), "alpha": args.alpha}
    print(f"[{name}] weight code: making {len(with_copies)} copies with {args.workers} workers", flush=True)
    made = fanout(base, scheme, with_copies, owner, folder / "weight-copies", workers=args.workers, settings=settings,
                  show_progress=args.progress)
    changes = [100 * (c.clean_accuracy_after - c.clean_accuracy_before) for c in made.copies]
    result["fanout"] = {"copies": len(made.copies), "seconds": made.seconds, "workers": made.workers,
                        "reached_goal": sum(c.reached_goal for c in made.copies),
                        "code_accuracy_min": min(c.code_accuracy for c in made.copies),
                        "clean_change_points": [min(changes), float(np.median(changes)), max(changes)],
                        "seconds_per_copy_median": float(np.median([c.seconds for c in made.copies]))}
    print(f"[{name}] fan-out: {result['fanout']}", flush=True)
    copies = {c.customer: c.model_path for c in made.copies}

    def traced(model: torch.nn.Module, registry: list[str], description: str) -> dict:
        return brief(trace(scheme, registry, tm.TorchTarget(model, description=description), alpha=args.alpha, base=base))

    result["identification"] = [{"customer": c, **traced(tm.load_model(copies[c]), customers, c)} for c in with_copies]
    ident = result["identification"]
    print(f"[{name}] identified alone: {sum(x['accused'] == [x['customer']] for x in ident)}/{len(ident)}, by weights "
          f"{sum(x['weights']['accused'] == [x['customer']] for x in ident)}; weakest weight log10 p "
          f"{max(x['weights']['log10_p'] for x in ident):.0f}", flush=True)

    trials = [{"suspect": f"weight-coded copy of unregistered {c}", "kind": "other customers' copies",
               **traced(tm.load_model(copies[c]), [x for x in customers if x != c], c)} for c in with_copies]
    for path in sorted((CACHE / f"null-{name}").glob("*.safetensors")):
        trials.append({"suspect": path.stem, "kind": "independent models", **traced(tm.load_model(path), customers, path.stem)})
    head_only = sorted((folder / "copies").glob("*.safetensors"))  # the main run's copies: black-box code only
    for path in head_only:
        r = weight_trace(scheme, customers, tm.load_model(path), base, alpha=args.alpha / 2)
        trials.append({"suspect": f"head-only copy {path.stem}", "kind": "head-only copies (weight test only)",
                       "accused": r.accused, "weights": {"applies": r.applies, "accused": r.accused, "compared": r.compared,
                                                         "log10_p_adjusted": r.best.log10_p_adjusted, "note": r.note}})
    trials.append({"suspect": "base (never shipped)", "kind": "the base", **traced(base, customers, "base")})
    result["false_accusations"] = trials
    kinds = dict.fromkeys(t["kind"] for t in trials)
    for kind in kinds:
        rows = [t for t in trials if t["kind"] == kind]
        applied = [t for t in rows if t["weights"]["applies"]]
        print(f"[{name}] innocent {kind}: {len(rows)} trials, {sum(bool(t['accused']) for t in rows)} accusations; weight test "
              f"applied to {len(applied)}, accused {sum(bool(t['weights']['accused']) for t in applied)}; smallest adjusted "
              f"log10 p {min((t['weights']['log10_p_adjusted'] for t in applied if 'log10_p_adjusted' in t['weights']), default=0):.1f}",
              flush=True)

    rng = np.random.default_rng(0)
    collusion = []
    for size in (2, 3):
        for _ in range(args.collusion):
            group = [str(c) for c in rng.choice(with_copies, size=size, replace=False)]
            models = [tm.load_model(copies[c]) for c in group]
            avg = copy.deepcopy(models[0])
            avg.load_state_dict({k: sum(m.state_dict()[k] for m in models) / size for k in avg.state_dict()})
            r = traced(avg, customers, "weight average")
            collusion.append({"group": group, "accuracy": tm.accuracy(avg, *test),
                              "colluders_named": len(set(r["accused"]) & set(group)),
                              "colluders_named_by_weights": len(set(r["weights"]["accused"]) & set(group)),
                              "innocents_named": len(set(r["accused"]) - set(group)), **r})
    result["collusion"] = collusion
    for size in (2, 3):
        rows = [x for x in collusion if len(x["group"]) == size]
        print(f"[{name}] weight averaging by {size}: >= 1 named {sum(x['colluders_named'] > 0 for x in rows)}/{len(rows)}, "
              f"all named {sum(x['colluders_named'] == size for x in rows)}, innocents {sum(x['innocents_named'] for x in rows)}",
              flush=True)

    _STATE.update(attacks=attacks(len(thief.x)), copies=copies, test=test, thief=thief, scheme=scheme,
                  registry=customers, alpha=args.alpha, base=base)
    start = time.perf_counter()
    attacked = _attack_pool([(c, i) for c in with_copies[: args.attack_copies] for i in range(len(_STATE["attacks"]))],
                            args.workers)
    result["attacks"], result["attack_seconds"] = attacked, time.perf_counter() - start
    for a in attacked:
        w = a["weights"]
        print(f"[{name}] {a['customer']} {a['attack']:45s} copy {100 * a['copy_accuracy']:.2f} thief {100 * a['thief_accuracy']:.2f} "
              f"{'in' if a['within_budget'] else 'OUT'} named {a['accused']} | black box {a['matches']}/{a['informative']} "
              f"log10p {a['log10_p']:.1f} | weights {w['agreements']}/{w['compared']} log10p {w['log10_p']:.1f}", flush=True)
    (folder / f"{name}-weights.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def disguise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The thief's free, function-preserving moves: a derangement of every hidden layer, then per-unit rescaling (1/4 to 4)."""
    return rescale_units(permute_units(model, seed), seed + 1)


def symmetry_attacks(thief_size: int, epochs: int) -> list[tuple[str, object]]:
    """What follows the disguise: nothing, RTLL, RTAL at lr 5e-4 and 2e-3, prune 50% then fine-tune all layers."""
    prune_then_tune = (Prune(0.5, "magnitude"), FineTune("FTAL", n_samples=thief_size, epochs=epochs, lr=5e-4))
    return [("disguise only", None),
            ("disguise + RTLL lr 5e-4", FineTune("RTLL", n_samples=thief_size, epochs=epochs, lr=5e-4)),
            ("disguise + RTAL lr 5e-4", FineTune("RTAL", n_samples=thief_size, epochs=epochs, lr=5e-4)),
            ("disguise + RTAL lr 2e-3", FineTune("RTAL", n_samples=thief_size, epochs=epochs, lr=2e-3)),
            ("disguise + prune 50% + FTAL lr 5e-4", prune_then_tune)]


def _symmetry_one(job: tuple[str, str, int, int]) -> dict:
    """One suspect of the symmetry scenario: ``(kind, name, attack index, disguise seed)``, models from ``_STATE``."""
    torch.set_num_threads(1)
    kind, name, index, seed = job
    s = _STATE
    model = s["models"][name]
    label, attack = s["attacks"][index]
    start = time.perf_counter()
    stolen = disguise(model, seed) if index >= 0 else copy.deepcopy(model)
    for step in attack if isinstance(attack, tuple) else ([attack] if attack is not None else []):
        stolen = step.run(stolen, s["thief"]).model
    stolen.eval()
    acc = tm.accuracy(stolen, *s["test"])
    registry = s["registry"] if kind != "other customer's copy" else [c for c in s["registry"] if c != name]
    result = trace(s["scheme"], registry, tm.TorchTarget(stolen, description=f"{kind} {name}"), alpha=s["alpha"],
                   base=s["base"])
    blind = weight_trace(s["scheme"], registry, stolen, s["base"], alpha=s["alpha"] / 2, align=False)
    w = result.weights
    drop = 100 * (s["accuracy"][name] - acc)
    return {"kind": kind, "suspect": name, "attack": "plain" if index < 0 else label, "seed": seed,
            "accuracy_before": s["accuracy"][name], "thief_accuracy": acc, "drop_points": drop,
            "within_budget": drop <= DEFAULT_BUDGET_POINTS, "accused": result.accused,
            "right": kind == "leaked copy" and result.accused == [name],
            "false": [c for c in result.accused if c != name] if kind == "leaked copy" else list(result.accused),
            "alignment": None if w.alignment is None else w.alignment.to_dict(),
            "unaligned_weight_log10_p": blind.best.log10_p if blind.best else None,
            "unaligned_weight_accused": blind.accused, "seconds": time.perf_counter() - start, **brief(result)}


def _symmetry_pool(jobs: list[tuple[str, str, int, int]], workers: int) -> list[dict]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if workers <= 1:
        return [_symmetry_one(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_symmetry_one, jobs))


def run_symmetry(name: str, args: argparse.Namespace, command: str) -> dict:
    """Issue 17's acceptance scenario: leaked weight-coded copies disguised (derangement + rescaling), then re-trained or pruned.

    ``--symmetry-copies`` copies made by ``fanout`` (weight code and black-box code), each disguised and
    attacked by every entry of :func:`symmetry_attacks`, traced with ``trace(..., base=base)`` among
    ``--registry-size`` customers. Innocents: the fanout copies traced without their customer,
    ``--innocent-copies`` weight-coded copies of unregistered customers (``add_weight_code``, no training),
    ``--independents`` independently trained models of the base's architecture, and the base; each plain,
    disguised, and (the first ``--innocent-attacked`` of each kind) disguised and attacked as the leaked copies.
    """
    quick = args.quick
    thief_size, epochs, base_epochs = (400, 15, 15) if quick else (10000, 5, 3)
    owner, thief, test, base, record, scheme = setup(name, thief_size, base_epochs)
    folder = OUT / name
    customers = [f"customer-{i:04d}" for i in range(args.registry_size)]
    leaked = customers[: args.symmetry_copies]
    settings = TrainSettings(seed=0) if not quick else TrainSettings(seed=0, lr=3e-3, target_code_accuracy=0.45,
                                                                      max_clean_drop=0.02, pool_size=1000,
                                                                      validation_size=300)
    result: dict = {"dataset": name, "command": command, "machine": machine(), "date": time.strftime("%Y-%m-%d", time.gmtime()),
                    "quick": quick, "pack_copies": args.symmetry_pack, "base": {**record, "test_accuracy": tm.accuracy(base, *test)},
                    "settings": settings.__dict__, "registry_size": len(customers), "alpha": args.alpha,
                    "thief_size": thief_size, "attack_epochs": epochs}
    models: dict[str, torch.nn.Module]
    if args.symmetry_pack:
        print(f"[{name}] symmetry: {len(leaked)} pack-time copies (weight code only, as `pack --customer`)", flush=True)
        models = {c: weight_coded_copy(base, scheme, c) for c in leaked}
    else:
        print(f"[{name}] symmetry: making {len(leaked)} weight-coded copies", flush=True)
        made = fanout(base, scheme, leaked, owner, folder / "symmetry-copies", workers=args.workers, settings=settings,
                      show_progress=args.progress)
        models = {c.customer: tm.load_model(c.model_path) for c in made.copies}
    innocents: list[tuple[str, str]] = [("other customer's copy", c) for c in leaked]
    for i in range(args.innocent_copies):
        other = copy.deepcopy(base)
        add_weight_code(other, scheme, f"unregistered-{i:04d}")
        models[f"unregistered-{i:04d}"] = other
        innocents.append(("unregistered weight-coded copy", f"unregistered-{i:04d}"))
    for seed in range(1, args.independents + 1):
        models[f"independent-s{seed}"] = trained_model(owner, "small_cnn", seed, base_epochs)[0]
        innocents.append(("independent model", f"independent-s{seed}"))
    models["base"] = base
    innocents.append(("the base", "base"))
    accuracy = {k: tm.accuracy(m, *test) for k, m in models.items()}
    attacks_ = symmetry_attacks(thief_size, epochs)
    _STATE.update(models=models, attacks=attacks_, thief=thief, test=test, scheme=scheme, registry=customers,
                  alpha=args.alpha, base=base, accuracy=accuracy)
    jobs = [("leaked copy", c, i, 100 + k) for k, c in enumerate(leaked) for i in range(len(attacks_))]
    per_kind: dict[str, int] = {}
    for k, (kind, who) in enumerate(innocents):
        jobs += [(kind, who, -1, 0), (kind, who, 0, 200 + k)]
        per_kind[kind] = per_kind.get(kind, 0) + 1
        if per_kind[kind] <= args.innocent_attacked:
            jobs += [(kind, who, i, 200 + k) for i in range(1, len(attacks_))]
    start = time.perf_counter()
    runs = _symmetry_pool(jobs, args.workers)
    result["seconds"] = time.perf_counter() - start
    result["runs"] = runs
    leaks = [r for r in runs if r["kind"] == "leaked copy"]
    within = [r for r in leaks if r["within_budget"]]
    innocent_runs = [r for r in runs if r["kind"] != "leaked copy"]
    result["summary"] = {"leaked_runs": len(leaks), "within_budget": len(within),
                         "named_alone_within_budget": sum(r["right"] for r in within),
                         "unaligned_weight_test_named": sum(r["unaligned_weight_accused"] == [r["suspect"]] for r in leaks),
                         "innocent_trials": len(innocent_runs), "false_accusations": sum(bool(r["false"]) for r in runs),
                         "smallest_innocent_weight_log10_p_adjusted": min(
                             (r["weights"]["log10_p_adjusted"] for r in innocent_runs if "log10_p_adjusted" in r["weights"]),
                             default=None)}
    for r in leaks:
        moved = "" if r["alignment"] is None else r["alignment"]["moved"]
        print(f"[{name}] {r['suspect']} {r['attack']:38s} {100 * r['accuracy_before']:.2f} -> {100 * r['thief_accuracy']:.2f} "
              f"{'in' if r['within_budget'] else 'OUT'} named {r['accused']} | weights log10p {r['weights'].get('log10_p', 0):.0f} "
              f"(unaligned {r['unaligned_weight_log10_p']:.1f}), units moved {moved}", flush=True)
    for kind in dict.fromkeys(r["kind"] for r in innocent_runs):
        rows = [r for r in innocent_runs if r["kind"] == kind]
        print(f"[{name}] innocent {kind}: {len(rows)} trials, {sum(bool(r['accused']) for r in rows)} accused; smallest adjusted "
              f"weight log10 p {min(r['weights'].get('log10_p_adjusted', 0) for r in rows):.1f}", flush=True)
    print(f"[{name}] summary: {result['summary']} ({result['seconds']:.0f} s)", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}-symmetry{'-quick' if quick else ''}.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def symmetry_section(r: dict) -> str:
    """The symmetry subsection of the docs from a ``run_symmetry`` result."""
    s = r["summary"]
    lines = [f"### {r['dataset']} — disguised leaks: alignment before the weight test (run of {r['date']})", "",
             f"Command: `{r['command']}`. Leaked copies "
             + ("made at pack time (`pack --customer`: the weight code only, no training)" if r.get("pack_copies")
                else "made by `fanout` (weight and black-box code)") + ", disguised by a "
             "derangement of every hidden layer and per-unit rescaling (1/4 to 4, function unchanged), then attacked "
             f"({r['attack_epochs']} epochs on the thief's {r['thief_size']:,} images); traced with `trace --base` among "
             f"{r['registry_size']:,} customers, alpha {r['alpha']:.0e}.", "",
             "| attack | within 2 points | named alone | weight log10 p (aligned) | weight log10 p unaligned |", "|---|---|---|---|---|"]
    leaks = [x for x in r["runs"] if x["kind"] == "leaked copy"]
    for name in dict.fromkeys(x["attack"] for x in leaks):
        rows = [x for x in leaks if x["attack"] == name]
        lines.append(f"| {name} | {sum(x['within_budget'] for x in rows)}/{len(rows)} | {sum(x['right'] for x in rows)}/{len(rows)} | "
                     + ", ".join(f"{x['weights'].get('log10_p', 0):.0f}" for x in rows) + " | "
                     + ", ".join(f"{x['unaligned_weight_log10_p']:.1f}" for x in rows) + " |")
    lines += ["", f"Within budget, named alone: **{s['named_alone_within_budget']} of {s['within_budget']}**. Innocent "
              f"suspects: **{s['false_accusations']} accused of {s['innocent_trials']}** (other customers' copies, unregistered "
              "weight-coded copies, independent models, the base; each plain, disguised, and some disguised and attacked); "
              f"smallest adjusted weight log10 p {s['smallest_innocent_weight_log10_p_adjusted']:.1f}.", ""]
    return "\n".join(lines)


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
        lines += [f"### {r['dataset']} — black-box code only (copies without the weight code; run of {r['date']})", "", f"Command: `{r.get('command', 'nice -n 10 .venv/bin/python bench/tracing.py --datasets ' + r['dataset'])}`.",
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


def weight_section(r: dict) -> str:
    """The weight-code subsection of the docs from a ``run_weights`` result."""
    f = r["fanout"]
    ident = r["identification"]
    lines = [f"### {r['dataset']} — weight code (run of {r['date']})", "",
             f"Command: `{r['command']}`. Base: {100 * r['base']['test_accuracy']:.2f}% clean. Copies made with the weight code "
             f"(strength {r['settings']['weight_strength']}: each weight except the output layer's moved by 2% of its "
             f"tensor's RMS, keyed signs) and the black-box code as above. Suspects traced as model files against the base "
             f"among {r['registry_size']} registered customers; alpha {r['alpha']:.0e} split between the black-box and "
             "the weight test (Bonferroni).", "",
             f"**{f['copies']} copies in {f['seconds'] / 60:.1f} min** with {f['workers']} worker processes (median "
             f"{f['seconds_per_copy_median']:.0f} s per copy; {f['reached_goal']} reached the black-box code goal; clean "
             f"change min/median/max {f['clean_change_points'][0]:+.2f} / {f['clean_change_points'][1]:+.2f} / "
             f"{f['clean_change_points'][2]:+.2f} points, weight code included). Each named alone: "
             f"{sum(x['accused'] == [x['customer']] for x in ident)}/{len(ident)}; by the weight test alone "
             f"{sum(x['weights']['accused'] == [x['customer']] for x in ident)}/{len(ident)}, weakest log10 p "
             f"{max(x['weights']['log10_p'] for x in ident):.0f} with {ident[0]['weights']['entries']:,} coded weights; "
             f"weight test time (1,000 customers) median {1000 * float(np.median([x['weights']['seconds'] for x in ident])):.0f} ms.", "",
             "False accusations (suspects carrying no registered customer's weight code):", "",
             "| suspects | trials | accused (either test) | weight test applied | accused by weights | smallest adjusted log10 p (weights) |",
             "|---|---|---|---|---|---|"]
    trials = r["false_accusations"]
    for kind in dict.fromkeys(t["kind"] for t in trials):
        rows = [t for t in trials if t["kind"] == kind]
        applied = [t for t in rows if t["weights"]["applies"]]
        smallest = min((t["weights"]["log10_p_adjusted"] for t in applied if "log10_p_adjusted" in t["weights"]), default=None)
        lines.append(f"| {kind} | {len(rows)} | {sum(bool(t['accused']) for t in rows)} | {len(applied)} | "
                     f"{sum(bool(t['weights']['accused']) for t in applied)} | {'—' if smallest is None else f'{smallest:.1f}'} |")
    att = r["attacks"]
    lines += ["", f"Attacks ({len({a['customer'] for a in att})} copies × {len({a['attack'] for a in att})} attacks, "
              f"{r['attack_seconds'] / 60:.1f} min); per copy: copy → thief accuracy, black-box matches / informative, "
              "weight agreements / compared (log10 p), who is named:", "",
              "| attack | within 2 points | named (right / innocent) | copy → thief accuracy (%) | black box | weights |",
              "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(a["attack"] for a in att):
        rows = [a for a in att if a["attack"] == name]
        lines.append(f"| `{name}` | {sum(a['within_budget'] for a in rows)}/{len(rows)} | {sum(a['right'] for a in rows)}/"
                     f"{sum(bool(a['false']) for a in rows)} | "
                     + ", ".join(f"{100 * a['copy_accuracy']:.2f} → {100 * a['thief_accuracy']:.2f}" for a in rows) + " | "
                     + ", ".join(f"{a['matches']}/{a['informative']}" for a in rows) + " | "
                     + ", ".join(f"{a['weights']['agreements']:,}/{a['weights']['compared']:,} ({a['weights']['log10_p']:.0f})"
                                 for a in rows) + " |")
    within = [a for a in att if a["within_budget"]]
    lines += ["", f"Within budget: right customer named alone in {sum(a['right'] for a in within)} of {len(within)} runs; "
              f"an innocent named after an attack: {sum(bool(a['false']) for a in att)}.", "",
              "| weight averaging | groups | ≥ 1 colluder named | all named | named by weights (all / ≥ 1) | innocents named | accuracy |",
              "|---|---|---|---|---|---|---|"]
    for size in (2, 3):
        rows = [x for x in r["collusion"] if len(x["group"]) == size]
        if rows:
            lines.append(f"| {size} customers | {len(rows)} | {sum(x['colluders_named'] > 0 for x in rows)} | "
                         f"{sum(x['colluders_named'] == size for x in rows)} | "
                         f"{sum(x['colluders_named_by_weights'] == size for x in rows)} / "
                         f"{sum(x['colluders_named_by_weights'] > 0 for x in rows)} | {sum(x['innocents_named'] for x in rows)} | "
                         f"{100 * min(x['accuracy'] for x in rows):.2f}–{100 * max(x['accuracy'] for x in rows):.2f}% |")
    return "\n".join(lines + [""])


def rtll_variants(quick: bool) -> list[tuple[str, dict]]:
    """Where the black-box code is put (``TrainSettings`` fields over the run's settings): issue 17, item 4."""
    out = [("head only (default)", {}),
           ("head + feature pull", dict(feature_match=1.0, feature_preserve=1.0)),
           ("last conv layer + head, feature pull", dict(feature_match=1.0, feature_preserve=1.0, body_layers=1))]
    if not quick:
        out.append(("whole network, feature pull", dict(feature_match=1.0, feature_preserve=1.0, body_layers=2)))
    return out


def rtll_attacks(thief_size: int, epochs: int) -> list:
    """The re-training attacks the code must survive: RTLL and RTAL at lr 5e-4 and 2e-3."""
    return [FineTune(mode, n_samples=thief_size, epochs=epochs, lr=lr) for mode in ("RTLL", "RTAL") for lr in (5e-4, 2e-3)]


def _rtll_one(job: tuple[int, str]) -> dict:
    """One copy of the RTLL-code scenario: ``(variant index, customer)``, made and attacked; the rest from ``_STATE``."""
    import dataclasses
    import warnings

    from tracemark.fingerprint import feature_cache, mark_customer
    from tracemark.fingerprint.fanout import code_accuracy

    torch.set_num_threads(1)
    index, customer = job
    s = _STATE
    label, fields = s["variants"][index]
    settings = dataclasses.replace(s["settings"], **fields)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cache = feature_cache(s["base"], s["scheme"], s["owner"], settings)
        model, report = mark_customer(s["base"], s["scheme"], customer, s["owner"], settings=settings, cache=cache)
    made = time.perf_counter() - start
    copy_acc = tm.accuracy(model, *s["test"])
    registry, others = s["registry"], [c for c in s["registry"] if c != customer]
    row = {"variant": label, "fields": fields, "customer": customer, "copy_seconds": made, "reached_goal": report.reached_goal,
           "clean_change_points": 100 * (copy_acc - s["base_accuracy"]), "code_accuracy": code_accuracy(model, s["scheme"], customer),
           "plain": brief(trace(s["scheme"], registry, tm.TorchTarget(model), alpha=s["alpha"])), "attacks": []}
    for attack in s["attacks"]:
        stolen = attack.run(copy.deepcopy(model), s["thief"]).model.eval()
        acc = tm.accuracy(stolen, *s["test"])
        result = trace(s["scheme"], registry, tm.TorchTarget(stolen), alpha=s["alpha"])
        unregistered = trace(s["scheme"], others, tm.TorchTarget(stolen), alpha=s["alpha"])
        row["attacks"].append({"attack": f"{attack.mode} lr {attack.lr:g}", "drop_points": 100 * (copy_acc - acc),
                               "within_budget": 100 * (copy_acc - acc) <= DEFAULT_BUDGET_POINTS,
                               "right": result.accused == [customer], "false": [c for c in result.accused if c != customer],
                               "unregistered_accused": unregistered.accused, **brief(result)})
    row["seconds"] = time.perf_counter() - start
    return row


def run_rtll_code(name: str, args: argparse.Namespace, command: str) -> dict:
    """Issue 17, item 4: does a black-box code put in the features (``feature_match``, ``body_layers``) survive RTLL/RTAL?

    Per variant of :func:`rtll_variants`, ``--rtll-copies`` copies made by ``mark_customer`` (black-box code only),
    each attacked by :func:`rtll_attacks` and traced among ``--registry-size`` customers; innocents: each attacked
    copy against the registry without its customer, and the base attacked the same way.
    """
    quick = args.quick
    thief_size, epochs, base_epochs = (400, 15, 15) if quick else (10000, 5, 3)
    owner, thief, test, base, record, scheme = setup(name, thief_size, base_epochs)
    settings = TrainSettings(seed=0, weight_strength=0.0)
    if quick:
        settings = TrainSettings(seed=0, weight_strength=0.0, lr=3e-3, target_code_accuracy=0.45, max_clean_drop=0.02,
                                 pool_size=1000, validation_size=300)
    customers = [f"customer-{i:04d}" for i in range(args.registry_size)]
    variants, attacks_ = rtll_variants(quick), rtll_attacks(thief_size, epochs)
    base_accuracy = tm.accuracy(base, *test)
    _STATE.update(variants=variants, settings=settings, base=base, scheme=scheme, owner=owner, test=test, thief=thief,
                  registry=customers, alpha=args.alpha, attacks=attacks_, base_accuracy=base_accuracy)
    jobs = [(i, customers[k]) for i in range(len(variants)) for k in range(args.rtll_copies)]
    start = time.perf_counter()
    if args.workers <= 1:
        rows = [_rtll_one(j) for j in jobs]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=args.workers, mp_context=multiprocessing.get_context("fork")) as pool:
            rows = list(pool.map(_rtll_one, jobs))
    innocents = []
    for attack in attacks_:
        stolen = attack.run(copy.deepcopy(base), thief).model.eval()
        innocents.append({"suspect": "base", "attack": f"{attack.mode} lr {attack.lr:g}",
                          **brief(trace(scheme, customers, tm.TorchTarget(stolen), alpha=args.alpha))})
    result = {"dataset": name, "command": command, "machine": machine(), "date": time.strftime("%Y-%m-%d", time.gmtime()),
              "quick": quick, "base": {**record, "test_accuracy": base_accuracy}, "settings": settings.__dict__,
              "registry_size": len(customers), "alpha": args.alpha, "thief_size": thief_size, "attack_epochs": epochs,
              "rows": rows, "innocents": innocents, "seconds": time.perf_counter() - start}
    for r in rows:
        print(f"[{name}] {r['variant']:38s} {r['customer']} clean {r['clean_change_points']:+.2f} code {r['code_accuracy']:.2f} "
              f"({r['copy_seconds']:.0f} s) | " + " | ".join(
                  f"{a['attack']} {-a['drop_points']:+.1f} {'named' if a['right'] else 'not named'} {a['matches']}/{a['informative']} "
                  f"{a['log10_p']:.1f}" for a in r["attacks"]), flush=True)
    falsely = sum(bool(a["false"]) + bool(a["unregistered_accused"]) for r in rows for a in r["attacks"])
    print(f"[{name}] innocents accused: {falsely} (attacked copies, without their customer) + "
          f"{sum(bool(x['accused']) for x in innocents)} (the base attacked) ({result['seconds']:.0f} s)", flush=True)
    folder = OUT / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}-rtll-code{'-quick' if quick else ''}.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def rtll_section(r: dict) -> str:
    """The RTLL-code subsection of the docs from a ``run_rtll_code`` result: one row per variant tried."""
    rows = r["rows"]
    attacks_ = list(dict.fromkeys(a["attack"] for x in rows for a in x["attacks"]))
    lines = [f"### {r['dataset']} — a black-box code in the features: after re-training the last layer (run of {r['date']})", "",
             f"Command: `{r['command']}`. Copies with the black-box code only, {len(rows) // max(1, len(set(x['variant'] for x in rows)))} "
             f"per variant; attacks {r['attack_epochs']} epochs on the thief's {r['thief_size']:,} images; traced among "
             f"{r['registry_size']:,} customers, alpha {r['alpha']:.0e}. Per attack: Δ points (thief vs copy), named alone "
             "(of copies), matches / informative, log10 p.", "",
             "| variant | clean change (points) | code accuracy | s per copy | " + " | ".join(attacks_) + " |",
             "|---|---|---|---|" + "---|" * len(attacks_)]
    for variant in dict.fromkeys(x["variant"] for x in rows):
        mine = [x for x in rows if x["variant"] == variant]
        cells = []
        for name in attacks_:
            runs = [a for x in mine for a in x["attacks"] if a["attack"] == name]
            cells.append(", ".join(f"{-a['drop_points']:+.1f}" for a in runs) + f"; named {sum(a['right'] for a in runs)}/{len(runs)}; "
                         + ", ".join(f"{a['matches']}/{a['informative']} ({a['log10_p']:.0f})" for a in runs))
        lines.append(f"| {variant} | " + ", ".join(f"{x['clean_change_points']:+.2f}" for x in mine) + " | "
                     + ", ".join(f"{100 * x['code_accuracy']:.0f}%" for x in mine) + " | "
                     + f"{float(np.median([x['copy_seconds'] for x in mine])):.0f} | " + " | ".join(cells) + " |")
    falsely = sum(bool(a["false"]) + bool(a["unregistered_accused"]) for x in rows for a in x["attacks"])
    trials = 2 * sum(len(x["attacks"]) for x in rows) + len(r["innocents"])
    lines += ["", f"Innocents accused: **{falsely + sum(bool(x['accused']) for x in r['innocents'])} of {trials}** "
              "(each attacked copy against the registry without its customer, the base attacked the same way).", ""]
    return "\n".join(lines)


def load_results(path: Path) -> dict:
    """A saved result, dated by its file when it does not say (runs made before results carried a date)."""
    result = json.loads(path.read_text())
    result.setdefault("date", time.strftime("%Y-%m-%d", time.gmtime(path.stat().st_mtime)))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["mnist"])
    parser.add_argument("--customers", type=int, default=100, help="customers given a copy")
    parser.add_argument("--registry-size", type=int, default=1000, help="customers registered")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--attack-copies", type=int, default=3)
    parser.add_argument("--collusion", type=int, default=10, help="groups of each size")
    parser.add_argument("--alpha", type=float, default=1e-9)
    parser.add_argument("--weight-code", action="store_true", help="run the weight-code part instead of the main one")
    parser.add_argument("--weight-copies", type=int, default=20, help="with --weight-code: customers given a copy")
    parser.add_argument("--symmetry", action="store_true",
                        help="run the disguised-leak scenario (derangement + rescaling, then re-training or pruning) instead")
    parser.add_argument("--symmetry-copies", type=int, default=5, help="with --symmetry: leaked copies made by fanout")
    parser.add_argument("--symmetry-pack", action="store_true",
                        help="with --symmetry: leaked copies carry the weight code only (pack-time, no fine-tune)")
    parser.add_argument("--innocent-copies", type=int, default=45, help="with --symmetry: unregistered weight-coded copies")
    parser.add_argument("--independents", type=int, default=10, help="with --symmetry: independently trained models")
    parser.add_argument("--innocent-attacked", type=int, default=5,
                        help="with --symmetry: innocents of each kind also disguised and attacked")
    parser.add_argument("--quick", action="store_true", help="with --symmetry: digits, few models, short attacks (< 3 min)")
    parser.add_argument("--rtll-code", action="store_true",
                        help="run issue 17 item 4 instead: black-box codes put in the features, then RTLL / RTAL "
                             "(with --quick: digits, 1 copy per variant, < 3 min)")
    parser.add_argument("--rtll-copies", type=int, default=3, help="with --rtll-code: copies per variant")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--docs-only", action="store_true", help="only rebuild the docs section from saved results")
    args = parser.parse_args()
    command = "nice -n 10 .venv/bin/python bench/tracing.py " + " ".join(sys.argv[1:])
    if args.quick and args.rtll_code:
        args.datasets, args.rtll_copies = ["digits"], min(args.rtll_copies, 1)
    elif args.quick:
        args.symmetry, args.datasets, args.symmetry_copies = True, ["digits"], min(args.symmetry_copies, 2)
        args.innocent_copies, args.independents = min(args.innocent_copies, 40), min(args.independents, 3)
        args.innocent_attacked = min(args.innocent_attacked, 1)
    for name in [] if args.docs_only else args.datasets:
        (run_rtll_code if args.rtll_code else run_symmetry if args.symmetry else run_weights if args.weight_code else run)(name, args, command)
    if not args.no_docs and not args.quick:
        saved = [OUT / name / f"{name}.json" for name in ("mnist", "fashion-mnist")]
        weights = [OUT / name / f"{name}-weights.json" for name in ("mnist", "fashion-mnist")]
        symmetry = [OUT / name / f"{name}-symmetry.json" for name in ("mnist", "fashion-mnist")]
        rtll = [OUT / name / f"{name}-rtll-code.json" for name in ("mnist", "fashion-mnist")]
        write_section("tracing", "\n".join([section([load_results(p) for p in saved if p.is_file()])]
                                           + [weight_section(load_results(p)) for p in weights if p.is_file()]
                                           + [symmetry_section(load_results(p)) for p in symmetry if p.is_file()]
                                           + [rtll_section(load_results(p)) for p in rtll if p.is_file()]))


if __name__ == "__main__":
    main()
