"""The end-to-end demo: train, mark, and check three suspects, on data bundled with scikit-learn."""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tracemark._util.files import atomic_write_text
from tracemark.data import build_model, load_dataset, save_model
from tracemark.data.export import save_onnx
from tracemark.embedding import EmbedReport, embed
from tracemark.keys import WatermarkKey
from tracemark.report import trigger_grid
from tracemark.targets import TorchTarget, load_target
from tracemark.training import accuracy, fit, to_tensor_dataset
from tracemark.verification import verify


@dataclass
class DemoRow:
    """One suspect checked in the demo."""

    suspect: str
    expected: str
    clean_accuracy: float
    matches: int
    queries: int
    p_value: float
    verdict: str

    @property
    def as_expected(self) -> bool:
        return self.verdict == self.expected


@dataclass
class DemoResult:
    """Everything the demo made and found."""

    out_dir: str
    key_commitment: str
    embed_report: EmbedReport
    rows: list[DemoRow] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def all_as_expected(self) -> bool:
        return all(row.as_expected for row in self.rows)

    def to_dict(self) -> dict:
        return {
            "out_dir": self.out_dir,
            "key_commitment": self.key_commitment,
            "embed_report": self.embed_report.to_dict(),
            "rows": [asdict(r) | {"as_expected": r.as_expected} for r in self.rows],
            "all_as_expected": self.all_as_expected,
            "seconds": self.seconds,
        }

    def __str__(self) -> str:
        header = f"{'suspect':<38} {'clean acc':>9} {'matches':>9} {'p-value':>10}  verdict"
        lines = [str(self.embed_report), "", header, "-" * len(header)]
        for r in self.rows:
            mark = "" if r.as_expected else f"   (expected {r.expected}!)"
            lines.append(f"{r.suspect:<38} {r.clean_accuracy:>9.2%} {r.matches:>4}/{r.queries:<4} {r.p_value:>10.2g}  {r.verdict}{mark}")
        lines.append("")
        lines.append(f"files in {self.out_dir}/ ; {self.seconds:.0f} s in all")
        return "\n".join(lines)


def run_demo(out_dir: str | Path = "demo-output", seed: int = 0, show_progress: bool = True) -> DemoResult:
    """Train a CNN on scikit-learn's digits, mark it with a content key, and verify three suspects.

    Suspects: the marked model itself (exported to ONNX, as a thief would ship it), a copy a
    thief fine-tuned on its own data, and an independently trained model. Writes the key,
    models, a PNG of the triggers and ``results.json`` to ``out_dir``.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    data = load_dataset("digits", seed=seed)
    half = len(data.x_train) // 2
    owner_x, owner_y = data.x_train, data.y_train
    thief_x, thief_y = data.x_train[half:], data.y_train[half:]

    model = build_model("small_cnn", data.input_shape, data.num_classes, seed=seed)
    fit(model, to_tensor_dataset(owner_x, owner_y), epochs=20, seed=seed, show_progress=show_progress, description="training base model")
    save_model(model, out / "base.safetensors")

    # the key is derived from the demo's seed, so a run is reproducible (a real key takes fresh random bytes)
    key_seed = hashlib.sha256(f"tracemark-demo-key/{seed}".encode()).digest()
    key = WatermarkKey.generate("content", images=data.x_train, labels=data.y_train, n_triggers=100, name="demo", seed=key_seed)
    key.save(out / "watermark.key")
    trigger_grid(key.triggers(), out / "triggers.png", title="content triggers (secret drawing, keyed labels)")
    # digits has 360 test images (one image = 0.28 points), so the demo allows a 1-point wobble
    report = embed(model, key, data, seed=seed, max_clean_drop=0.01, show_progress=show_progress)
    save_model(model, out / "marked.safetensors")
    save_onnx(model, out / "marked.onnx", data.input_shape)

    thief = copy.deepcopy(model)
    fit(thief, to_tensor_dataset(thief_x, thief_y), epochs=5, lr=5e-4, seed=seed + 1, show_progress=show_progress,
        description="thief fine-tuning a copy")
    save_model(thief, out / "stolen-finetuned.safetensors")

    independent = build_model("lenet", data.input_shape, data.num_classes, seed=seed + 100)
    fit(independent, to_tensor_dataset(owner_x, owner_y), epochs=20, seed=seed + 100, show_progress=show_progress,
        description="training an independent model")
    save_model(independent, out / "independent.safetensors")

    result = DemoResult(str(out), key.commitment(), report)
    suspects = [
        ("marked model, exported to ONNX", "copy", load_target(out / "marked.onnx"), model),
        ("stolen copy, fine-tuned by a thief", "copy", load_target(out / "stolen-finetuned.safetensors"), thief),
        ("independently trained model", "no-evidence", TorchTarget(independent, "independent model"), independent),
    ]
    for name, expected, target, net in suspects:
        verdict = verify(key, target)
        result.rows.append(DemoRow(name, expected, accuracy(net, data.x_test, data.y_test), verdict.matches,
                                   verdict.answered, verdict.p_value, verdict.verdict))
    result.seconds = time.perf_counter() - start
    atomic_write_text(out / "results.json", json.dumps(result.to_dict(), indent=2, default=str))
    return result
