"""Core benchmark (issue 2): embedding cost and accuracy, detection strength, false accusations.

For each dataset, kind and seed: train a base CNN, make a key, embed it post hoc, and measure
the clean-accuracy change (on test images not used for the embedding's stopping rule), trigger
accuracy, the p-value of the marked model with 100 queries, and the embedding's compute relative
to training the base model (samples processed, and seconds against plain training steps timed in
the same run). Then verify every key against independently trained models (two architectures,
other seeds) and count false `copy` verdicts.

    python bench/core.py                       # MNIST and Fashion-MNIST, 3 seeds, 10 independents
    python bench/core.py --datasets digits --seeds 0 --independents 4   # a quick look

Writes the table into docs/benchmarks.md (section `core`) and JSON into bench/out/core.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import torch

import tracemark as tm
from _common import ROOT, machine, seconds_per_training_step, trained_model, write_section
from tracemark.errors import DatasetError

KINDS = ("content", "noise", "unrelated", "abstract")
# "<kind>-single": the NXP/IBM scheme (every trigger -> one watermark class), verified against an
# empirical null from the independent models (leave-one-out when an independent is the suspect)


def run_dataset(name: str, args: argparse.Namespace) -> list[dict]:
    data = tm.load_dataset(name)
    half = len(data.x_test) // 2
    validation = (data.x_test[:half], data.y_test[:half])
    report_data = tm.ImageData(data.name, data.x_train, data.y_train, data.x_test[half:], data.y_test[half:], data.num_classes)
    step_seconds = seconds_per_training_step(data, "small_cnn")
    independents = []
    for i in range(args.independents):
        arch = ("small_cnn", "lenet")[i % 2]
        model, _ = trained_model(data, arch, seed=100 + i, epochs=args.independent_epochs)
        independents.append((f"{arch}-s{100 + i}", model))
    rows = []
    for seed in args.seeds:
        base, record = trained_model(data, "small_cnn", seed=seed, epochs=args.epochs)
        for kind in args.kinds:
            base_kind, _, mode = kind.partition("-")
            single = {"label_mode": "single", "target_label": (3 * seed + 1) % data.num_classes} if mode == "single" else {}
            key = tm.WatermarkKey.generate(base_kind, images=data.x_train, labels=data.y_train, n_triggers=100,
                                           seed=bytes([seed]) * 16 + kind.encode()[:16].ljust(16, b"\0"), **single)
            marked = copy.deepcopy(base)
            report = tm.embed(marked, key, report_data, validation=validation, seed=seed)
            refs = [tm.TorchTarget(model, name) for name, model in independents]

            def null_without(i: int | None):
                return tm.empirical_null(key, [r for j, r in enumerate(refs) if j != i]) if single else None

            verdict = tm.verify(key, tm.TorchTarget(marked), max_queries=100, null=null_without(None))
            others = [tm.verify(key, ref, max_queries=100, null=null_without(i)) for i, ref in enumerate(refs)]
            unmarked = tm.verify(key, tm.TorchTarget(base), max_queries=100, null=null_without(None))
            row = {
                "dataset": name,
                "kind": kind,
                "seed": seed,
                "base_accuracy": report.clean_accuracy_before,
                "clean_change_points": report.clean_accuracy_change,
                "trigger_accuracy": report.trigger_accuracy_after,
                "p_value": verdict.p_value,
                "verdict": verdict.verdict,
                "null": verdict.null["source"],
                "null_rate": verdict.null["rate"],
                "embed_steps": report.steps,
                "embed_samples": report.samples_seen,
                "base_samples": record["samples_seen"],
                "sample_ratio": report.samples_seen / record["samples_seen"],
                "time_ratio": report.seconds / (step_seconds * record["steps"]),
                "reached_goal": report.reached_goal,
                "independent_copies": sum(v.verdict == "copy" for v in others) + (unmarked.verdict == "copy"),
                "independents_checked": len(others) + 1,
                "independent_min_p": min([v.p_value for v in others] + [unmarked.p_value]),
                "independent_max_matches": max([v.matches for v in others] + [unmarked.matches]),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| dataset | kind | seeds | clean change (points) | trigger acc. | null (rate) | marked p-value (100 queries) | embed cost: samples / seconds vs base training | independents called copy | smallest independent p |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["dataset"], r["kind"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for dataset, kind in keys:
        group = [r for r in rows if r["dataset"] == dataset and r["kind"] == kind]
        changes = [r["clean_change_points"] for r in group]
        lines.append(
            f"| {dataset} | {kind} | {len(group)} | {min(changes):+.2f} … {max(changes):+.2f} | "
            f"{min(r['trigger_accuracy'] for r in group):.0%} | {group[0]['null']} ({max(r['null_rate'] for r in group):.3g}) | "
            f"≤ {max(r['p_value'] for r in group):.1e} | "
            f"{max(r['sample_ratio'] for r in group):.1%} / {max(r['time_ratio'] for r in group):.1%} | "
            f"{sum(r['independent_copies'] for r in group)} of {sum(r['independents_checked'] for r in group)} | "
            f"{min(r['independent_min_p'] for r in group):.2g} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS))
    parser.add_argument("--epochs", type=int, default=3, help="base model training epochs")
    parser.add_argument("--independents", type=int, default=10)
    parser.add_argument("--independent-epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--merge", action="store_true", help="keep other rows of bench/out/core.json (runs split by dataset or kind)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.datasets:
        try:
            rows += run_dataset(name, args)
        except DatasetError as exc:
            print(f"skipping {name}: {exc}", file=sys.stderr)
    if not rows:
        sys.exit("no dataset could be loaded")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    if args.merge and (out / "core.json").is_file():
        fresh = {(r["dataset"], r["kind"], r["seed"]) for r in rows}
        rows = [r for r in json.loads((out / "core.json").read_text()) if (r["dataset"], r["kind"], r["seed"]) not in fresh] + rows
    (out / "core.json").write_text(json.dumps(rows, indent=1))
    command = "python bench/core.py " + " ".join(sys.argv[1:])
    text = (
        "## Core: embedding and verification (capabilities 1–3)\n\n"
        f"Command: `{command.strip()}`; machine: {machine()}.\n\n"
        f"Base model: `small_cnn` trained {args.epochs} epochs (batch 128); keys: 100 triggers, keyed labels; "
        "post-hoc `tm.embed` with default settings, its stopping rule using the first half of the test set, "
        "the clean change measured on the second half. Cost counts the fine-tuning loop and its checks, as "
        "samples processed and as seconds against plain training steps timed in the same run. Independents: "
        f"{args.independents} models (`small_cnn` and `lenet`, other seeds, {args.independent_epochs} epochs) plus the "
        "unmarked base, each checked with every key at alpha = 1e-9. Bars: clean change within ±0.3 points, "
        "trigger accuracy ≥ 99%, p ≤ 1e-12, cost ≤ 15%, no independent called copy.\n\n" + table(rows) + "\n"
    )
    print(text)
    if not args.no_write:
        write_section("core", text)


if __name__ == "__main__":
    main()
