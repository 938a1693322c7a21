"""Helpers shared by benchmark scripts: machine description, cached models, the benchmarks.md sections."""

from __future__ import annotations

import json
import os
import platform
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import tracemark as tm

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / "out" / "cache"
BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"


def machine() -> str:
    """One line: cores, CPU model, Python, torch, date."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return f"{os.cpu_count()} cores, {cpu}; Python {platform.python_version()}, torch {torch.__version__}; {date}"


def trained_model(dataset: tm.ImageData, arch: str, seed: int, epochs: int, batch_size: int = 128) -> tuple[torch.nn.Module, dict]:
    """A reference model trained on ``dataset``, cached on disk with its training record."""
    stem = CACHE / dataset.name / f"{arch}-s{seed}-e{epochs}-b{batch_size}"
    weights, record_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if weights.is_file() and record_path.is_file():
        return tm.load_model(weights), json.loads(record_path.read_text())
    model = tm.build_model(arch, dataset.input_shape, dataset.num_classes, seed=seed)
    report = tm.fit(model, tm.to_tensor_dataset(dataset.x_train, dataset.y_train), epochs=epochs, batch_size=batch_size,
                    seed=seed, show_progress=True, description=f"{dataset.name} {arch} seed {seed}")
    record = {"steps": report.steps, "samples_seen": report.samples_seen, "seconds": report.seconds,
              "test_accuracy": tm.accuracy(model, dataset.x_test, dataset.y_test)}
    tm.save_model(model, weights)
    record_path.write_text(json.dumps(record))
    return model, record


def seconds_per_training_step(dataset: tm.ImageData, arch: str, batch_size: int = 128, steps: int = 100) -> float:
    """Time plain training steps now, so ratios compare work done in the same run."""
    model = tm.build_model(arch, dataset.input_shape, dataset.num_classes, seed=0)
    subset = tm.to_tensor_dataset(dataset.x_train[: steps * batch_size], dataset.y_train[: steps * batch_size])
    start = time.perf_counter()
    report = tm.fit(model, subset, epochs=1, batch_size=batch_size, seed=0)
    return (time.perf_counter() - start) / report.steps


def write_section(name: str, markdown: str) -> None:
    """Replace the ``<!-- name:start -->…<!-- name:end -->`` section of docs/benchmarks.md (or append it)."""
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.is_file() else "# Benchmarks\n"
    block = f"<!-- {name}:start -->\n{markdown.rstrip()}\n<!-- {name}:end -->"
    pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS_MD.write_text(text)
