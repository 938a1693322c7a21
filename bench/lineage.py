"""Lineage benchmark (issue 18): does a committed conferrable-example fingerprint survive the thief's attacks,
and does it spare independent models?

Per dataset: the owner's small CNN trained on the first ``--owner`` training images and marked with a content
key (``tm.embed``); the thief holds the next ``--thief`` images (and, for out-of-domain queries, the other
dataset's images). A lineage fingerprint from the owner's data (default pool: 14 surrogates made by the thief's
own attacks and 18 generation references on one half of it, 10 calibration references on the other), with
generation's CPU time and the pool's size.
Then, at alpha 1e-9: fine-tuning (FTAL), prune 50% + fine-tune, distillation (T = 3) into LeNet and an MLP,
label extraction (in-domain) into LeNet and an MLP, probability extraction (T = 1, in-domain) into LeNet and
an MLP, label extraction with out-of-domain queries into LeNet and an MLP, each with the thief's accuracy;
and false positives among independent models that took no part in generation or calibration: the rest of the
training set (never seen by the pool), other seeds, subset sizes, learning rates, epochs, Adam or SGD, the
three architectures and two that no pool member has (a wide CNN, a deep MLP).

Stolen and independent models are cached under bench/out/lineage/<dataset>/suspects (keyed by what made
them), the pool under .../pool, so a re-run with other generation settings retrains nothing. ``--study``
also keeps every candidate the source labels with its target and writes every model's answers to them
(study.npz), to compare selection rules offline.

    nice -n 5 .venv/bin/python bench/lineage.py --datasets mnist fashion-mnist --owner 8000 --thief 8000 --epochs 3
    nice -n 5 .venv/bin/python bench/lineage.py --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import tracemark as tm
from _common import ROOT, machine, write_section
from tracemark.attacks import Distill, Extract, FineTune, Prune, ThiefData
from tracemark.lineage import GenerationSettings, LineageEvidence, create_lineage, default_plan, generate
from tracemark.lineage._data import owner_data, start_arrays
from tracemark.targets.local import TorchTarget

OUT = ROOT / "bench" / "out" / "lineage"
ALPHA = 1e-9
OTHER = {"mnist": "fashion-mnist", "fashion-mnist": "mnist"}


@dataclass(frozen=True)
class Sizes:
    """How much data and training a run uses."""

    owner: int
    thief: int
    epochs: int
    innocents: int


def _wide_cnn(c: int, h: int, w: int, k: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c, 48, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(48, 48, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48 * 16, k))


def _deep_mlp(c: int, h: int, w: int, k: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                         nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, k))


EXTRA_ARCHS = {"wide_cnn": _wide_cnn, "deep_mlp": _deep_mlp}


def _build(arch: str, shape: tuple[int, int, int], k: int, seed: int) -> nn.Module:
    if arch not in EXTRA_ARCHS:
        return tm.build_model(arch, shape, k, seed=seed)
    torch.manual_seed(seed)
    return EXTRA_ARCHS[arch](*shape, k)


def _sgd_fit(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, seed: int) -> None:
    """Plain SGD with momentum 0.9 (the pool trains with Adam only)."""
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        for lo in range(0, len(xt), 64):
            idx = order[lo : lo + 64]
            opt.zero_grad()
            F.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()


def _cached(path: Path, arch: str, shape: tuple[int, int, int], k: int, make) -> nn.Module:
    """Load ``path`` (state dict) into a fresh ``arch``, or ``make()`` the model and save its state there."""
    from safetensors.torch import load_file, save_file

    if path.is_file():
        model = _build(arch, shape, k, 0)
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    model = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({n: t.detach().contiguous() for n, t in model.state_dict().items()}, str(path))
    return model.eval()


def _attacks(marked: nn.Module, thief: ThiefData, epochs: int) -> list[tuple[str, str, object]]:
    """(label, the stolen model's architecture, how to make it)."""
    n, m = thief.size(), thief.size("ood")

    def prune_finetune() -> nn.Module:
        pruned = Prune(0.5).run(marked, thief).model
        return FineTune("FTAL", n_samples=n, epochs=max(1, epochs // 2), lr=5e-4).run(pruned, thief).model

    rows: list[tuple[str, str, object]] = [
        ("fine-tune (FTAL, all layers)", "small_cnn", FineTune("FTAL", n_samples=n, epochs=max(1, epochs // 2), lr=5e-4)),
        ("prune 50% + fine-tune", "small_cnn", prune_finetune)]
    for arch in ("lenet", "mlp"):
        rows += [(f"distill (T=3) -> {arch}", arch, Distill(arch, n_queries=n, epochs=epochs)),
                 (f"label extraction, in-domain -> {arch}", arch, Extract(arch, n_queries=n, epochs=epochs)),
                 (f"probability extraction (T=1), in-domain -> {arch}", arch,
                  Distill(arch, n_queries=n, epochs=epochs, temperature=1.0)),
                 (f"label extraction, out-of-domain -> {arch}", arch, Extract(arch, pool="ood", n_queries=m, epochs=epochs))]
    return rows


def _innocent_specs(count: int, rest: int, epochs: int) -> list[dict]:
    """Independent models: architectures, seeds, subset sizes and offsets (in the part of the training set no
    pool member saw), learning rates, epochs and optimisers that differ from the pool's."""
    archs = ("small_cnn", "lenet", "mlp", "wide_cnn", "deep_mlp")
    specs = []
    for i in range(count):
        size = int(rest * (0.25, 0.4, 0.55, 0.7)[i % 4])
        sgd = i % 4 == 3
        specs.append({"arch": archs[i % 5], "seed": 9000 + i, "offset": (i * 997) % max(1, rest - size), "size": size,
                      "epochs": epochs + i % 3, "optimiser": "sgd" if sgd else "adam",
                      "lr": 0.05 if sgd else (1e-3, 2e-3, 5e-4)[i % 3]})
    return specs


def _answers(models: list[nn.Module], x: np.ndarray) -> np.ndarray:
    return np.stack([TorchTarget(m).predict_labels(x) for m in models]) if models else np.zeros((0, len(x)), np.int64)


def run_dataset(name: str, sizes: Sizes, settings: GenerationSettings, quick: bool, study: bool) -> dict:
    data = tm.load_dataset(name)
    root = OUT / name
    owner = tm.ImageData(data.name, data.x_train[: sizes.owner], data.y_train[: sizes.owner], data.x_test, data.y_test,
                         data.num_classes)
    hi = sizes.owner + sizes.thief
    ood = None if quick else tm.load_dataset(OTHER[name]).x_train[: sizes.thief]
    thief = ThiefData(x=data.x_train[sizes.owner : hi], y=data.y_train[sizes.owner : hi], ood_x=ood, seed=7, device="cpu")
    shape, k = data.input_shape, data.num_classes
    tag = f"o{sizes.owner}-t{sizes.thief}-e{sizes.epochs}"

    def make_marked() -> nn.Module:
        model = tm.build_model("small_cnn", shape, k, seed=0)
        tm.fit(model, tm.to_tensor_dataset(owner.x_train, owner.y_train), epochs=sizes.epochs, seed=0, device="cpu")
        key = tm.WatermarkKey.generate("content", images=owner.x_train, labels=owner.y_train, n_triggers=100, seed=bytes(32))
        tm.embed(model, key, owner, seed=0)
        return model

    marked = _cached(root / "suspects" / f"marked-{tag}.safetensors", "small_cnn", shape, k, make_marked)
    marked.tracemark_spec = tm.build_model("small_cnn", shape, k).tracemark_spec  # type: ignore[assignment]
    base_acc = tm.accuracy(marked, data.x_test, data.y_test)
    plan = default_plan(0, epochs=sizes.epochs)
    cpu = time.process_time()
    built = create_lineage(marked, owner, pool_dir=root / f"pool-{tag}", plan=plan, settings=settings, device="cpu")
    lineage_cpu = time.process_time() - cpu
    path = built.lineage.save(root / f"{name}.lineage")
    evidence = LineageEvidence.load(path)

    suspects: list[tuple[str, str, float, nn.Module]] = []
    for i, (label, arch, attack) in enumerate(_attacks(marked, thief, sizes.epochs)):
        if "out-of-domain" in label and ood is None:
            continue
        make = attack if callable(attack) and not hasattr(attack, "run") else (lambda a=attack: a.run(marked, thief).model)
        model = _cached(root / "suspects" / f"attack{i}-{tag}.safetensors", arch, shape, k, make)
        suspects.append(("attack", label, tm.accuracy(model, data.x_test, data.y_test), model))
    rest = len(data.x_train) - hi
    for spec in _innocent_specs(sizes.innocents, rest, sizes.epochs):
        lo = hi + spec["offset"]
        x, y = data.x_train[lo : lo + spec["size"]], data.y_train[lo : lo + spec["size"]]

        def make(spec=spec, x=x, y=y) -> nn.Module:
            model = _build(spec["arch"], shape, k, spec["seed"])
            if spec["optimiser"] == "sgd":
                _sgd_fit(model, x, y, spec["epochs"], spec["lr"], spec["seed"])
            else:
                tm.fit(model, tm.to_tensor_dataset(x, y), epochs=spec["epochs"], lr=spec["lr"], seed=spec["seed"], device="cpu")
            return model

        stem = f"innocent-{spec['arch']}-s{spec['seed']}-n{spec['size']}-at{lo}-e{spec['epochs']}-{spec['optimiser']}{spec['lr']}"
        model = _cached(root / "suspects" / f"{stem}.safetensors", spec["arch"], shape, k, make)
        desc = f"{spec['arch']} seed {spec['seed']}, {spec['size']} images, {spec['optimiser']} lr {spec['lr']}, {spec['epochs']} epochs"
        suspects.append(("innocent", desc, tm.accuracy(model, data.x_test, data.y_test), model))

    rows, innocents = [], []
    for role, label, acc, model in suspects:
        result = evidence.test(TorchTarget(model, description=label), alpha=ALPHA)
        row = {"model": label, "accuracy": acc, "decision": result.decision, "matches": result.details["matches"],
               "queries": result.queries, "p_value": result.p_value}
        (rows if role == "attack" else innocents).append(row)
    if study:
        _study(root, marked, owner, built.pool, settings, suspects)
    return {"dataset": name, "quick": quick, "sizes": sizes.__dict__, "settings": settings.to_dict(),
            "marked_accuracy": base_acc, "lineage_cpu_seconds": lineage_cpu,
            "generation": built.lineage.generation, "pool_members": len(built.pool.members),
            "pool_trained": built.pool.trained, "pool_seconds": built.pool.seconds,
            "calibration": built.lineage.calibration.to_dict(), "attacks": rows, "innocents": innocents, "machine": machine()}


def _study(root: Path, marked: nn.Module, owner: tm.ImageData, pool, settings: GenerationSettings, suspects) -> None:
    """Every candidate the source labels with its target, and every model's answers to it (study.npz)."""
    od = owner_data(owner)
    x, y = start_arrays(od.starts, 2 * settings.candidates, settings.seed)
    loose = replace(settings, n=settings.candidates, min_surrogates=0.0, max_references=1.0)
    made = generate(marked, [m.model for m in pool.select("generation", "surrogate")],
                    [m.model for m in pool.select("generation", "reference")], x, y, loose, device="cpu")
    images = made.inputs.astype(np.float32) / 255
    groups = {"surrogates": pool.select("generation", "surrogate"), "references": pool.select("generation", "reference"),
              "calibration": pool.select("calibration")}
    arrays = {g: _answers([m.model for m in ms], images) for g, ms in groups.items()}
    arrays["attacks"] = _answers([s[3] for s in suspects if s[0] == "attack"], images)
    arrays["innocents"] = _answers([s[3] for s in suspects if s[0] == "innocent"], images)
    np.savez(root / "study.npz", labels=made.labels, conferrability=made.conferrability, **arrays,
             attack_names=np.array([s[1] for s in suspects if s[0] == "attack"]),
             surrogate_names=np.array([m.spec.name for m in groups["surrogates"]]))


def markdown(results: list[dict]) -> str:
    """The docs section: one subsection per dataset, each with the command and machine that made it."""
    quick = all(r["quick"] for r in results)
    lines = ["## Lineage fingerprint" + (" (digits-quick)" if quick else ""), ""]
    for r in results:
        c, g, z, s = r["calibration"], r["generation"], r["sizes"], r["settings"]
        lines += [f"### {r['dataset']}{' (quick)' if r['quick'] else ''}", "",
                  f"Conferrable examples, at most {s['n']} inputs kept of {s['candidates']} candidates (epsilon {s['epsilon']}, "
                  f"{s['steps']} steps; kept only where at least {s['min_surrogates']:.0%} of the generation surrogates "
                  f"and at most {s['max_references']:.0%} of the generation references give the target label), alpha "
                  f"{ALPHA:.0e}. `python bench/lineage.py {' '.join(r['argv'])}`; {r['machine']}.", "",
                  f"Owner {z['owner']} training images, thief {z['thief']} (its queries), every model {z['epochs']} "
                  f"epochs; marked model {r['marked_accuracy']:.1%}. Pool {r['pool_members']} models "
                  f"({r['pool_trained']} trained this run, {r['pool_seconds']:.0f} s); lineage {r['lineage_cpu_seconds']:.0f} "
                  f"CPU s with the pool, generation alone {g['cpu_seconds']:.0f} CPU s ({g['eligible']} of {g['tried']} "
                  f"candidates eligible). Calibration: {len(c['agreements'])} held-out references agree on "
                  f"{sum(c['agreements'])} of {len(c['agreements']) * c['n_inputs']} answers (pooled {c['pooled_rate']:.1%}, "
                  f"most {max(c['agreements'])} / {c['n_inputs']}), {c['bound']} bound {c['rate']:.3f}.", "",
                  "| attack | thief accuracy | matches / queries | p-value | verdict |", "|---|---|---|---|---|"]
        lines += [f"| {a['model']} | {a['accuracy']:.1%} | {a['matches']} / {a['queries']} | {a['p_value']:.1e} | "
                  f"{a['decision']} |" for a in r["attacks"]]
        copies = sum(i["decision"] == "copy" for i in r["innocents"])
        top = max(i["matches"] for i in r["innocents"])
        accs = [i["accuracy"] for i in r["innocents"]]
        worst = max(c["agreements"])
        lines += ["", f"False positives: **{copies} `copy`** among {len(r['innocents'])} independent models outside the pool "
                  f"(accuracy {min(accs):.1%}–{max(accs):.1%}; most matches {top} / {c['n_inputs']}, "
                  f"{sum(i['matches'] > worst for i in r['innocents'])} of them above the most agreeable calibration "
                  f"reference's {worst}).", "",
                  "| independent model | accuracy | matches | verdict |", "|---|---|---|---|"]
        lines += [f"| {i['model']} | {i['accuracy']:.1%} | {i['matches']} | {i['decision']} |" for i in r["innocents"]]
        lines += [""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    parser.add_argument("--quick", action="store_true", help="digits only, a small version (about 3 minutes)")
    parser.add_argument("--owner", type=int, default=8000, help="owner's training images")
    parser.add_argument("--thief", type=int, default=8000, help="thief's images (and queries)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of the marked model, pool and thieves")
    parser.add_argument("--innocents", type=int, default=20)
    parser.add_argument("--n", type=int, help="fingerprint inputs kept (default 300; --quick: 100)")
    parser.add_argument("--candidates", type=int, help="start images tried (default 1000; --quick: 300)")
    parser.add_argument("--epsilon", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--min-surrogates", type=float, help="default 0.5 (--quick: the library's 1/3)")
    parser.add_argument("--max-references", type=float, help="default 0 (--quick: the library's 1/3)")
    parser.add_argument("--study", action="store_true", help="also write every model's answers to every candidate")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--docs-from", type=Path, help="write the section from this results.json instead of running")
    args = parser.parse_args()
    if args.docs_from is not None:
        write_section("lineage", markdown(json.loads(args.docs_from.read_text())))
        return
    torch.set_num_threads(1)
    if args.quick:
        names, sizes = ["digits"], Sizes(700, 400, 15, 6)
    else:
        names, sizes = args.datasets, Sizes(args.owner, args.thief, args.epochs, args.innocents)
    loose = GenerationSettings()
    settings = GenerationSettings(
        n=args.n or (100 if args.quick else 300), candidates=args.candidates or (300 if args.quick else 1000),
        epsilon=args.epsilon, steps=args.steps,
        min_surrogates=args.min_surrogates if args.min_surrogates is not None else (loose.min_surrogates if args.quick else 0.5),
        max_references=args.max_references if args.max_references is not None else (loose.max_references if args.quick else 0.0))
    OUT.mkdir(parents=True, exist_ok=True)
    saved = OUT / ("quick.json" if args.quick else "results.json")
    # datasets not run this time keep their saved results, so a one-dataset run does not drop the others
    results = {r["dataset"]: r for r in (json.loads(saved.read_text()) if saved.is_file() else [])}
    for name in names:  # written after each dataset, so an interrupted run keeps what it finished
        results[name] = {**run_dataset(name, sizes, settings, args.quick, args.study), "argv": sys.argv[1:]}
        saved.write_text(json.dumps(list(results.values()), indent=1, default=str))
    text = markdown(list(results.values()))
    print(text)
    if not args.no_docs:
        write_section("lineage-quick" if args.quick else "lineage", text)


if __name__ == "__main__":
    main()
