"""Benchmark: the built-in ResNet-18 on Fashion-MNIST as 3×32×32, read from disk through a memmap Dataset.

Row 1: base training time vs post-hoc embedding time, clean accuracy before/after, trigger accuracy,
detection p with at most 100 queries, and an independently trained ResNet's verdict.
Row 2: peak RSS of ``embed`` over a 10× on-disk dataset (the same images replicated) vs the 1× one,
each in a fresh subprocess running the same number of steps.

The images (28×28 grey, padded to 32×32, the channel repeated 3 times, uint8) are written once as
memmap folders under bench/out/cache/resnet/ and read back with ``tracemark.data.MemmapImages``.
Writes its tables into docs/benchmarks.md between the ``resnet`` markers.

    python bench/resnet.py                       # full: width 64, 60,000 training images, 2 epochs
    python bench/resnet.py --quick --no-write    # < 3 min on 2 CPU cores: width 8, 2,000 images
    python bench/resnet.py --device cuda         # on a GPU (bench/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from _common import CACHE, ROOT, machine, write_section

import tracemark as tm
from tracemark.data import MemmapImages, resnet18, shared_data_dir, write_memmap
from tracemark.data.factories import load_weights, save_weights

SHAPE = (3, 32, 32)
KEY_SEED = bytes(range(32))
QUERY_BUDGET = 100


def to_rgb32(x: np.ndarray) -> np.ndarray:
    """N×28×28 uint8 as N×3×32×32 uint8: zero-padded by 2 on each side, the grey channel repeated."""
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2)))
    return np.repeat(padded[:, None], 3, axis=1)


def memmap_split(name: str, split: str, n: int) -> MemmapImages:
    """The first ``n`` images of a split as a memmap folder (written once, then reused)."""
    folder = CACHE / "resnet" / f"{name}-rgb32" / f"{split}-{n}"
    if not (folder / "labels.npy").is_file():
        filename = "mnist.npz" if name == "mnist" else "fashion_mnist.npz"
        with np.load(shared_data_dir() / filename, allow_pickle=False) as archive:
            x, y = archive[f"x_{split}"][:n], archive[f"y_{split}"][:n]
        chunks = (to_rgb32(x[i : i + 4096]) for i in range(0, len(x), 4096))
        write_memmap(folder, chunks, y, shape=(len(x), *SHAPE), dtype=np.uint8)
    return MemmapImages(folder)


def replicate(source: MemmapImages, k: int) -> MemmapImages:
    """``source`` written ``k`` times over into one memmap folder beside it (chunk by chunk, never whole in memory)."""
    folder = source.directory.parent / f"{source.directory.name}-x{k}"
    if not (folder / "labels.npy").is_file():
        n = len(source)
        chunks = (np.asarray(source.images[i : i + 4096]) for _ in range(k) for i in range(0, n, 4096))
        write_memmap(folder, chunks, np.tile(np.asarray(source.labels), k), shape=(k * n, *SHAPE), dtype=np.uint8)
    return MemmapImages(folder)


def log(message: str) -> None:
    """A progress line on stderr (the tables go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _build(width: int, seed: int) -> torch.nn.Module:
    return resnet18(SHAPE, 10, width=width, seed=seed)


def train_model(train: MemmapImages, width: int, seed: int, epochs: int, args: argparse.Namespace
                ) -> tuple[torch.nn.Module, float]:
    model = _build(width, seed)
    report = tm.fit(model, train, epochs=epochs, batch_size=args.batch_size, seed=seed, device=args.device,
                    precision=args.precision, num_workers=args.workers, show_progress=sys.stderr.isatty(),
                    description=f"resnet18 w{width} seed {seed}")
    return model, report.seconds


def rss_child(args: argparse.Namespace) -> None:
    """In a fresh process: load the base model and the key, embed over ``args.rss_child`` for a fixed step count,
    print the peak RSS as JSON."""
    work = Path(args.work)
    data = MemmapImages(args.rss_child)
    model = load_weights(_build(args.width, 0), work / "base.safetensors", "resnet18")
    key = tm.WatermarkKey.load(work / "k.key")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = tm.embed(model, key, data, max_steps=args.rss_steps, min_steps=args.rss_steps, validation_size=args.val_size, lr=args.lr,
                      batch_size=args.batch_size, device=args.device, precision=args.precision, num_workers=args.workers)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"items": len(data), "steps": report.steps, "before_kib": before, "peak_kib": peak}))


def rss_row(train: MemmapImages, work: Path, args: argparse.Namespace) -> list[dict]:
    rows = []
    for k, data in ((1, train), (10, replicate(train, 10))):
        cmd = [sys.executable, __file__, "--rss-child", str(data.directory), "--work", str(work), "--width", str(args.width),
               "--rss-steps", str(args.rss_steps), "--val-size", str(args.val_size), "--batch-size", str(args.batch_size),
               "--workers", str(args.workers), "--lr", str(args.lr)]
        cmd += ["--device", args.device] if args.device else []
        cmd += ["--precision", args.precision] if args.precision else []
        log(f"peak RSS of embed over {k}x ({len(data)} images), in a fresh process")
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        record = json.loads(out.strip().splitlines()[-1])
        on_disk = sum(f.stat().st_size for f in data.directory.iterdir())
        rows.append({"k": k, "on_disk_bytes": on_disk, **record})
    return rows


def resnet_row(train: MemmapImages, test: MemmapImages, work: Path, args: argparse.Namespace) -> dict:
    log(f"training the base ResNet-18 (width {args.width}) on {len(train)} images")
    base, base_seconds = train_model(train, args.width, 0, args.epochs, args)
    clean_before = tm.accuracy(base, test, batch_size=256, device=args.device, num_workers=args.workers)
    save_weights(base, work / "base.safetensors", SHAPE, 10)
    key = tm.WatermarkKey.generate("content", images=train, num_classes=10, n_triggers=args.triggers, seed=KEY_SEED)
    key.save(work / "k.key")
    marked = copy.deepcopy(base)
    validation = Subset(test, range(min(args.val_size, len(test))))
    log(f"embedding {args.triggers} triggers (base trained in {base_seconds:.0f} s, clean accuracy {clean_before:.2%})")
    report = tm.embed(marked, key, train, validation=validation, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                      device=args.device, precision=args.precision, num_workers=args.workers,
                      show_progress=sys.stderr.isatty())
    clean_after = tm.accuracy(marked, test, batch_size=256, device=args.device, num_workers=args.workers)
    marked.eval()
    verdict = tm.verify(key, tm.TorchTarget(marked, input_shape=SHAPE, num_classes=10, device=args.device),
                        max_queries=QUERY_BUDGET)
    log(f"embedded in {report.seconds:.0f} s ({report.steps} steps); training the independent ResNet-18")
    independent, _ = train_model(train, args.width, 1, args.independent_epochs or args.epochs, args)
    other = tm.verify(key, tm.TorchTarget(independent, input_shape=SHAPE, num_classes=10, device=args.device),
                      max_queries=QUERY_BUDGET)
    return {"params": sum(p.numel() for p in base.parameters()), "base_seconds": base_seconds,
            "embed_seconds": report.seconds, "embed_steps": report.steps, "reached_goal": report.reached_goal,
            "clean_before": clean_before, "clean_after": clean_after, "trigger_accuracy": report.trigger_accuracy_after,
            "p_value": verdict.p_value, "queries": verdict.inputs_sent, "verdict": verdict.verdict,
            "independent": other.verdict, "independent_p": other.p_value}


def _mib(kib: float) -> str:
    return f"{kib / 1024:,.0f} MiB"


def _ok(passed: bool) -> str:
    return "meets the bar" if passed else "**misses the bar**"


def markdown(r: dict, rss: list[dict], args: argparse.Namespace, command: str, device: str) -> str:
    change = 100 * (r["clean_after"] - r["clean_before"])
    cost = r["embed_seconds"] / r["base_seconds"]
    lines = [
        f"ResNet-18 (built-in, base width {args.width}, {r['params'] / 1e6:.2f}M parameters) on {args.dataset} as 3×32×32, "
        f"read from a memmap folder (`MemmapImages`): {args.train_size:,} training images, {args.epochs} epoch(s) "
        f"(independent model: {args.independent_epochs or args.epochs}), "
        f"batch {args.batch_size}; a content key of {args.triggers} triggers (keyed labels) embedded at lr {args.lr:g}; clean accuracy on the first "
        f"{args.test_size:,} test images (embedding stops on the first {min(args.val_size, args.test_size):,}); device {device}"
        + (f", precision {args.precision}" if args.precision else "") + ".",
        f"Command: `{command}`. Machine: {machine()}.",
        "",
        "| base training | post-hoc embedding | cost | clean before | clean after | change | trigger accuracy "
        "| detection p (queries) | independent ResNet-18 |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {r['base_seconds']:.1f} s | {r['embed_seconds']:.1f} s ({r['embed_steps']} steps) | {cost:.1%} "
        f"| {r['clean_before']:.2%} | {r['clean_after']:.2%} | {change:+.2f} points | {r['trigger_accuracy']:.0%} "
        f"| {r['p_value']:.1e} ({r['queries']}, {r['verdict']}) | {r['independent']} (p {r['independent_p']:.2f}) |",
        "",
        f"Bars: clean change ≥ -0.3 points ({_ok(change >= -0.3)}); trigger accuracy ≥ 99% ({_ok(r['trigger_accuracy'] >= 0.99)}); "
        f"p ≤ 1e-12 with ≤ {QUERY_BUDGET} queries ({_ok(r['p_value'] <= 1e-12 and r['queries'] <= QUERY_BUDGET)}); "
        f"embedding ≤ 15% of base training ({_ok(cost <= 0.15)}).",
    ]
    if rss:
        one = rss[0]["peak_kib"]
        lines += [
            "",
            f"Peak RSS of `embed` ({rss[0]['steps']} steps, each run in a fresh process) over the training set and over the "
            "same images replicated 10 times on disk:",
            "",
            "| dataset | images | on disk | peak RSS before embed | peak RSS | ratio to 1× |",
            "|---|---|---|---|---|---|",
            *(f"| {row['k']}× | {row['items']:,} | {row['on_disk_bytes'] / 2**20:,.0f} MiB | {_mib(row['before_kib'])} "
              f"| {_mib(row['peak_kib'])} | {row['peak_kib'] / one:.2f}× |" for row in rss),
            "",
            f"Bar: 10× ≤ 1.2× the 1× peak ({_ok(rss[1]['peak_kib'] / one <= 1.2)}).",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("fashion-mnist", "mnist"), default="fashion-mnist")
    parser.add_argument("--width", type=int, default=64, help="ResNet-18 base channel width (64: the standard one).")
    parser.add_argument("--train-size", type=int, default=60_000)
    parser.add_argument("--test-size", type=int, default=10_000)
    parser.add_argument("--val-size", type=int, default=2000, help="Test images embed's stopping rule checks.")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--independent-epochs", type=int, default=None, help="Epochs of the independent model (default: --epochs).")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=5e-4, help="Embedding learning rate.")
    parser.add_argument("--triggers", type=int, default=100, help="Triggers in the key (content kind, keyed labels).")
    parser.add_argument("--rss-steps", type=int, default=200, help="Embedding steps of each RSS run.")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes.")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: the best one here).")
    parser.add_argument("--precision", choices=("bf16", "fp16"), default=None)
    parser.add_argument("--quick", action="store_true",
                        help="A smoke run: width 8, 1,000/500 images, 3 epochs (independent model: 1), batch 64, 20 triggers "
                             "at lr 2e-3, 5 RSS steps.")
    parser.add_argument("--skip-rss", action="store_true", help="Only the ResNet row.")
    parser.add_argument("--no-write", action="store_true", help="Print the tables only.")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args)
        return
    if args.quick:
        args.width, args.train_size, args.test_size, args.val_size, args.epochs, args.independent_epochs = 8, 1000, 500, 200, 3, 1
        args.batch_size, args.triggers, args.rss_steps, args.max_steps, args.lr = 64, 20, 5, 300, 2e-3
    device = str(tm.resolve_device(args.device))
    args.device = device
    train = memmap_split(args.dataset, "train", args.train_size)
    test = memmap_split(args.dataset, "test", args.test_size)
    work = CACHE / "resnet" / f"run-w{args.width}-n{args.train_size}"
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    row = resnet_row(train, test, work, args)
    rss = [] if args.skip_rss else rss_row(train, work, args)
    command = "python " + " ".join(shlex.quote(a) for a in [str(Path(__file__).relative_to(ROOT)), *sys.argv[1:]])
    text = markdown(row, rss, args, command, device)
    print(text)
    print(f"(whole run {time.perf_counter() - start:.0f} s)")
    print(json.dumps({"resnet": row, "rss": rss}))
    if not args.no_write:
        write_section("resnet", text)


if __name__ == "__main__":
    main()
