"""Robustness benchmark (capability 4): the standard attack suite on MNIST and Fashion-MNIST.

For each dataset: a null profile from independent models (0 of them may be called copy), then
each mark configuration trained (cached under bench/out/cache), attacked by the suite under
the SoK protocol, and written as JSON + HTML under bench/out/robustness; the summary table
goes into docs/benchmarks.md between the robustness markers.

    nice -n 10 .venv/bin/python bench/robustness.py            # full run
    .venv/bin/python bench/robustness.py --datasets digits --suite quick --null-models 3   # smoke
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import date
from pathlib import Path

import torch

import tracemark as tm
from tracemark.lab import build_null_profile, make_suite, run_suite
from tracemark.lab.victim import CONFIGS, marked_victim, out_of_domain_pool, split_thief
from tracemark.report import robustness_report

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- robustness:start -->", "<!-- robustness:end -->"


def run_dataset(name: str, args: argparse.Namespace) -> None:
    data = tm.load_dataset(name)
    owner, thief = split_thief(data, args.thief_size, out_of_domain_pool(name, args.ood_size, data.input_shape), seed=1)
    cache = Path(args.out) / "cache"
    profile, references = build_null_profile(owner, n_models=args.null_models, epochs=args.null_epochs,
                                             train_size=args.null_train_size, folder=cache / f"null-{name}",
                                             show_progress=args.progress)
    for config_name in args.configs:
        model, key, info = marked_victim(owner, CONFIGS[config_name], cache, show_progress=args.progress)
        profile.add_key(key, references)
        fp = profile.false_positives(key)
        print(f"[{name}/{config_name}] {info['marked_accuracy']:.4f} clean, {info['trigger_accuracy']:.2f} triggers; "
              f"null profile: {fp}", flush=True)
        attacks = make_suite(args.suite, len(thief.x), len(thief.ood_x))
        result = run_suite(attacks, model, key, (owner.x_test, owner.y_test), thief, suite=args.suite, dataset=name,
                           null=profile.null_for(key), budget_points=args.budget, workers=args.workers,
                           show_progress=args.progress,
                           config={"mark": info, "null_profile": str(profile), "false_positives": fp.to_dict(),
                                   "command": args.command})
        stem = Path(args.out) / "robustness" / f"{name}-{config_name}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        result.save_json(stem.with_suffix(".json"))
        robustness_report(result, stem.with_suffix(".html"), key.triggers())
        print(result, flush=True)
        profile.save(cache / f"null-{name}" / "profile.json")


def pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def config_table(r: dict) -> list[str]:
    """Markdown lines for one result JSON (as written by ``SuiteResult.save_json``)."""
    fp, mark = r["config"]["false_positives"], r["config"]["mark"]
    lines = [f"Marked model: {pct(r['marked_accuracy'])} clean (same training without the mark: "
             f"{pct(mark['clean_accuracy'])}), {pct(r['marked_trigger_accuracy'])} triggers. Null: "
             f"{r['config']['null_profile']}; **{fp['called_copy']} of {fp['n_models']} called copy** (leave-one-out "
             f"null, smallest p {min(fp['p_values']):.2g}). Suite: {len(r['records'])} attacks in "
             f"{r['seconds'] / 60:.1f} min wall ({r.get('cpu_seconds', 0) / 60:.1f} CPU-min)."
             + (f" Command: `{r['config']['command']}`." if r["config"].get("command") else ""),
             "", "| kind | strongest attack | within budget | thief accuracy | Δ points | trigger acc. | p-value | removed by |",
             "|---|---|---|---|---|---|---|---|"]
    records = {x["attack"]: x for x in r["records"]}
    for s in r["summary"]:
        trig = records[s["strongest"]]["trigger_accuracy"]
        lines.append(f"| {s['kind']} | `{s['strongest']}` | {'yes' if s['within_budget'] else 'no'} | "
                     f"{pct(s['thief_accuracy'])} | {0.0 - s['accuracy_drop_points']:+.2f} | {pct(trig)} | "
                     f"{s['p_value']:.2g} | {len(s['removed_by'])} attack(s) |")
    removed = sorted((x for x in r["records"] if x["removed"]), key=lambda x: -x["thief_accuracy"])
    if r["survived"]:
        lines += ["", f"**Survived every attack of this run at the {r['budget_points']:g}-point budget** (see the findings below for other thief seeds).", ""]
    else:
        detail = "; ".join(f"`{x['attack']}` (thief {pct(x['thief_accuracy'])}, {0.0 - x['accuracy_drop_points']:+.2f} pts, "
                           f"triggers {pct(x['trigger_accuracy'])}, p={x['p_value']:.2g})" for x in removed)
        lines += ["", f"**Removed** by {len(removed)} of {len(r['records'])} attacks: {detail}.", ""]
    return lines


def markdown(out: Path) -> str:
    """The docs section, from every result JSON under ``out/robustness``."""
    lines = [START, "## Robustness lab (capability 4)", "",
             "Command: `nice -n 10 .venv/bin/python bench/robustness.py` (all three configurations on both datasets; "
             "trained models and null-profile models are cached in `bench/out/cache/`, `--docs-only` rebuilds this "
             f"section from the saved results). Machine: 2 cores shared with other jobs' experiments (load average 5-6 "
             f"during the runs; 2 worker processes, one torch thread each); date: {date.today().isoformat()}; "
             f"torch {torch.__version__}. Per-run JSON and HTML reports: `bench/out/robustness/`.", "",
             "Protocol (Lukas et al., SoK, IEEE S&P 2022): an attack *removes* the mark when verification no longer says "
             "`copy` (alpha 1e-9) while the thief's clean accuracy stays within 2 points of the marked model. The thief "
             "holds the last 10,000 training images (labelled for fine-tuning; unlabelled as the in-domain query pool of "
             "distillation and extraction) and 5,000 out-of-domain images (the other dataset); the owner trains on the "
             "other 50,000. Null: a profile of 20 independent models (small CNN, LeNet, MLP; seeds 1000-1019; 2 epochs "
             "on seeded 20,000-image subsets); p-values use the more cautious of a key's exact keyed rate and the "
             "profile's 99.9% Clopper-Pearson bound. “Strongest attack” = the attack of that kind, within budget, "
             "that leaves the highest p-value.", "",
             "Mark configurations: **baseline** = content key (secret drawing on source-class images), 100 triggers "
             "with per-trigger secret labels, embedded post hoc into a trained small CNN (3 epochs); **strong** = content "
             "key, 300 triggers all labelled class 0 (the NXP/IBM scheme: a learned backdoor, verified against the "
             "empirical null), mixed into training from scratch (5% trigger items, ±1-pixel shifts); **strong-aug** = "
             "strong plus trigger augmentation with the query-time transformations (blur, down/up-sampling, noise, "
             "bit depth).", ""]
    for dataset in ("mnist", "fashion-mnist"):
        for config_name in CONFIGS:
            path = out / "robustness" / f"{dataset}-{config_name}.json"
            if path.is_file():
                lines += [f"### {dataset} — {config_name}", ""] + config_table(json.loads(path.read_text()))
    lines += [NOTES, "", END]
    return "\n".join(lines)


NOTES = """### Findings (run of 2026-11-22)

* **Null:** 20 independent models per dataset; **0 called copy** for every key (leave-one-out null).
  On Fashion-MNIST, independent models give the single-class key's class to 2-12% of its triggers
  (stamped garments look like T-shirts), so its empirical null rate is 0.084, not 0.003 as on MNIST.
* **baseline** (post-hoc, keyed labels) is removed on both datasets, as the SoK found for published
  schemes: plain fine-tuning with the thief's 10,000 labelled images removes it with no accuracy loss
  (MNIST FTAL lr 5e-4: thief +0.16 points), as do distillation and label-only extraction, and on MNIST
  query-time blur (sigma 1.2) and 2x down-sampling. It survives pruning, int8 and weight noise.
* **strong** (training-time, single class, 300 triggers) survives every weight attack and every
  query-time transformation on both datasets (p <= 1e-100 at the budget). It is **not** safe against
  attacks that train a new model on its answers: on Fashion-MNIST label-only extraction into a small CNN
  removes it at 88.25% thief accuracy (-1.84 points; 14.7% trigger answers against a null of 8.4%,
  p = 2e-4). On MNIST the benchmark run survived the whole suite (clones kept 5-25% trigger answers;
  models trained like the clones on true labels give 0-0.7%), but rerunning distillation into a LeNet
  with thief seeds 2 and 3 removed it (98.04% and 97.99% thief accuracy, -0.87 and -0.92 points,
  p = 5e-4 and 0.08). So the best configuration does not survive the suite at the 2-point budget:
  **distillation and label-only extraction remove it**.
* **strong-aug** (MNIST only; the Fashion-MNIST run was stopped for time) loses even that partial
  transfer: distillation and extraction remove it (4 attacks); it survives everything else.
* **Time:** the standard MNIST suite (39 attacks) took 6.6-13 min wall with 2 worker processes on the
  shared machine, 6.1-6.4 CPU-minutes: within the 45-minute bar.
* **SoK comparison:** the SoK (Lukas et al. 2022) found every published scheme removable within 1 point.
  Our post-hoc mark agrees (fine-tuning removes it at +0.16 points); our training-time single-class
  mark resists all weight and input attacks but still falls to extraction within 1 point on MNIST
  (distillation, -0.87) and within 2 points on Fashion-MNIST (-1.84). Trigger marks need response
  marking (capability 6) against extraction."""


def write_docs(section: str, path: Path) -> None:
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    if START in text and END in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=sorted(CONFIGS))
    parser.add_argument("--suite", default="standard")
    parser.add_argument("--thief-size", type=int, default=10000)
    parser.add_argument("--ood-size", type=int, default=5000)
    parser.add_argument("--null-models", type=int, default=20)
    parser.add_argument("--null-epochs", type=int, default=2)
    parser.add_argument("--null-train-size", type=int, default=20000)
    parser.add_argument("--budget", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"))
    parser.add_argument("--docs", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--docs-only", action="store_true", help="Only rebuild the docs section from saved results.")
    args = parser.parse_args()
    args.command = "python bench/robustness.py " + " ".join(sys.argv[1:])
    torch.set_num_threads(1)
    if not args.docs_only:
        for name in args.datasets:
            run_dataset(name, args)
    if not args.no_docs:
        write_docs(markdown(Path(args.out)), Path(args.docs))
        print(f"updated {args.docs}")


if __name__ == "__main__":
    main()
