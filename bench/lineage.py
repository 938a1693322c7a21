"""Lineage benchmark (issue 18): does a committed conferrable-example fingerprint survive the thief's attacks,
and does it spare independent models?

Per dataset: the owner's small CNN trained on the owner's part of the training set and marked with a content
key (``tm.embed``); the thief holds the rest. A lineage fingerprint (default pool: 4 surrogates, 4 generation
and 8 calibration references) from the owner's data, with generation's CPU time and the pool's size. Then, at
alpha 1e-9: fine-tuning (FTAL), pruning (50% magnitude), prune-then-fine-tune, distillation into LeNet and an
MLP, label extraction into LeNet and an MLP (in-domain queries), each with the thief's accuracy; and false
positives among independently trained models outside the pool (other seeds, subsets, learning rates,
epochs and the three architectures).

Full runs read MNIST / Fashion-MNIST from ../shared/data (tracemark.data loaders); ``--quick`` runs on
digits (about 2 minutes on 2 cores) and, unless ``--no-docs``, writes the "lineage-quick" section.

    nice -n 10 .venv/bin/python bench/lineage.py --datasets mnist fashion-mnist
    nice -n 10 .venv/bin/python bench/lineage.py --quick
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import tracemark as tm
from _common import ROOT, machine, write_section
from tracemark.attacks import Distill, Extract, FineTune, Prune, ThiefData
from tracemark.lineage import GenerationSettings, LineageEvidence, create_lineage, default_plan
from tracemark.targets.local import TorchTarget

OUT = ROOT / "bench" / "out" / "lineage"
ALPHA = 1e-9


def _split(data: tm.ImageData, quick: bool) -> tuple[tm.ImageData, ThiefData]:
    """The owner's part (first 5/6, digits: first half) and the thief's (the rest) of the training set."""
    cut = len(data.x_train) // 2 if quick else len(data.x_train) * 5 // 6
    owner = tm.ImageData(data.name, data.x_train[:cut], data.y_train[:cut], data.x_test, data.y_test, data.num_classes)
    return owner, ThiefData(x=data.x_train[cut:], y=data.y_train[cut:], seed=7)


def _attacks(epochs: int, n: int) -> list[tuple[str, object]]:
    return [
        ("fine-tune (FTAL)", FineTune("FTAL", n_samples=n, epochs=max(2, epochs // 3), lr=5e-4)),
        ("prune 50%", Prune(0.5)),
        ("prune 50% + fine-tune", "prune-finetune"),
        ("distill -> lenet", Distill("lenet", n_queries=n, epochs=epochs)),
        ("distill -> mlp", Distill("mlp", n_queries=n, epochs=epochs)),
        ("label extraction -> lenet", Extract("lenet", n_queries=n, epochs=epochs)),
        ("label extraction -> mlp", Extract("mlp", n_queries=n, epochs=epochs)),
    ]


def run_dataset(name: str, quick: bool) -> dict:
    data = tm.load_dataset(name)
    owner, thief = _split(data, quick)
    epochs = 15 if quick else 5
    marked = tm.build_model("small_cnn", data.input_shape, data.num_classes, seed=0)
    tm.fit(marked, tm.to_tensor_dataset(owner.x_train, owner.y_train), epochs=epochs, seed=0)
    key = tm.WatermarkKey.generate("content", images=owner.x_train, labels=owner.y_train, n_triggers=100, seed=bytes(32))
    tm.embed(marked, key, owner, seed=0)
    base_acc = tm.accuracy(marked, data.x_test, data.y_test)
    settings = GenerationSettings(n=100, candidates=300, epsilon=0.25, steps=30 if quick else 40)
    plan = default_plan(0, epochs=epochs)
    cpu = time.process_time()
    built = create_lineage(marked, owner, pool_dir=OUT / name / "pool", plan=plan, settings=settings)
    lineage_cpu = time.process_time() - cpu
    path = built.lineage.save(OUT / name / f"{name}.lineage")
    evidence = LineageEvidence.load(path)
    rows = []
    for label, attack in _attacks(epochs if quick else 5, thief.size()):
        if attack == "prune-finetune":
            pruned = Prune(0.5).run(marked, thief).model
            stolen = FineTune("FTAL", n_samples=thief.size(), epochs=2, lr=5e-4).run(pruned, thief)
        else:
            stolen = attack.run(marked, thief)
        result = evidence.test(stolen.target, alpha=ALPHA)
        rows.append({"attack": label, "accuracy": tm.accuracy(stolen.model, data.x_test, data.y_test),
                     "decision": result.decision, "matches": result.details["matches"], "p_value": result.p_value})
    innocents = []
    for i in range(6 if quick else 20):
        arch = ("small_cnn", "lenet", "mlp")[i % 3]
        model = tm.build_model(arch, data.input_shape, data.num_classes, seed=9000 + i)
        lo = (i * len(data.x_train)) // (8 if quick else 24)
        x, y = data.x_train[lo:][: len(data.x_train) // 2], data.y_train[lo:][: len(data.x_train) // 2]
        tm.fit(model, tm.to_tensor_dataset(x, y), epochs=(epochs if quick else 3) + i % 3, lr=(1e-3, 2e-3, 5e-4)[i % 3], seed=9000 + i)
        result = evidence.test(TorchTarget(model, description=f"{arch} seed {9000 + i}"), alpha=ALPHA)
        innocents.append({"model": str(result.target), "decision": result.decision, "matches": result.details["matches"]})
    return {"dataset": name, "quick": quick, "marked_accuracy": base_acc, "lineage_cpu_seconds": lineage_cpu,
            "generation_cpu_seconds": built.lineage.generation["cpu_seconds"], "pool_members": len(built.pool.members),
            "pool_trained": built.pool.trained, "calibration": built.lineage.calibration.to_dict(), "attacks": rows,
            "innocents": innocents, "machine": machine()}


def markdown(results: list[dict]) -> str:
    lines = ["## Lineage fingerprint" + (" (digits-quick)" if all(r["quick"] for r in results) else ""), "",
             f"Conferrable examples, 100 inputs, alpha {ALPHA:.0e}; {results[0]['machine']}.", ""]
    for r in results:
        c = r["calibration"]
        lines += [f"### {r['dataset']}{' (quick)' if r['quick'] else ''}", "",
                  f"Marked model {r['marked_accuracy']:.1%}; pool {r['pool_members']} models ({r['pool_trained']} trained this run), "
                  f"lineage {r['lineage_cpu_seconds']:.0f} CPU s of which generation {r['generation_cpu_seconds']:.1f} CPU s; "
                  f"calibration: {len(c['agreements'])} references, pooled agreement {c['pooled_rate']:.1%}, {c['bound']} bound {c['rate']:.3f}.", "",
                  "| attack | thief accuracy | matches / 100 | verdict |", "|---|---|---|---|"]
        lines += [f"| {a['attack']} | {a['accuracy']:.1%} | {a['matches']} | {a['decision']} |" for a in r["attacks"]]
        copies = sum(i["decision"] == "copy" for i in r["innocents"])
        top = max(i["matches"] for i in r["innocents"])
        lines += ["", f"False positives: {copies} `copy` among {len(r['innocents'])} independent models outside the pool "
                  f"(most matches {top} / 100).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    parser.add_argument("--quick", action="store_true", help="digits only, a small version (about 2 minutes)")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = ["digits"] if args.quick else args.datasets
    results = [run_dataset(name, args.quick) for name in names]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / ("quick.json" if args.quick else "results.json")).write_text(json.dumps(results, indent=1, default=str))
    text = markdown(results)
    print(text)
    if not args.no_docs:
        write_section("lineage-quick" if args.quick else "lineage", text)


if __name__ == "__main__":
    main()
