"""``create_lineage``: pool, generation and calibration in one call, the way ``tracemark lineage new`` runs them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from tracemark.data.datasets import ImageData
from tracemark.lineage._data import class_count, owner_data, start_arrays
from tracemark.lineage.calibrate import DEFAULT_CONFIDENCE, MIN_REFERENCES, calibrate
from tracemark.lineage.errors import LineageError
from tracemark.lineage.fileformat import MAX_INPUTS, Lineage
from tracemark.lineage.generate import GenerationSettings, generate
from tracemark.lineage.pool import Pool, PoolPlan, build_pool, default_plan
from tracemark.targets.local import TorchTarget


@dataclass
class LineageBuild:
    """A new lineage fingerprint and the pool it came from."""

    lineage: Lineage
    pool: Pool

    def to_dict(self) -> dict[str, Any]:
        return {"lineage": self.lineage.to_dict(), "pool": {k: v for k, v in self.pool.to_dict().items() if k != "manifest"}}

    def __str__(self) -> str:
        g = self.lineage.generation
        return (f"{self.lineage}\n  generation: kept {g['kept']} of {g['tried']} candidates ({g['adversarial']} adversarial), "
                f"surrogates agree {g['surrogate_agreement']:.0%}, generation references {g['reference_agreement']:.0%}, "
                f"{g['cpu_seconds']:.1f} CPU s\n  {self.pool}")


def create_lineage(model: nn.Module, data: ImageData | Dataset, *, pool_dir: str | Path, plan: PoolPlan | None = None,
                   settings: GenerationSettings = GenerationSettings(), confidence: float = DEFAULT_CONFIDENCE,
                   min_references: int = MIN_REFERENCES, device: str | torch.device | None = None) -> LineageBuild:
    """A lineage fingerprint of ``model`` (the owner's marked model) on the owner's ``data``.

    Builds (or loads from ``pool_dir``) the pool of ``plan`` (default: :func:`default_plan` at the settings'
    seed), generates conferrable examples against its generation members from start images of ``data`` (an
    ImageData's test split, else the Dataset), and calibrates them on its calibration references.
    """
    if settings.n > MAX_INPUTS:
        raise LineageError(f"a lineage holds at most {MAX_INPUTS} inputs (verification asks each one), not {settings.n}")
    od = owner_data(data)
    spec = getattr(model, "tracemark_spec", None)
    plan = plan or default_plan(settings.seed, source_arch=spec.arch if spec is not None else "small_cnn")
    pool = build_pool(model, data, plan, pool_dir, device=device)
    x, y = start_arrays(od.starts, 2 * settings.candidates, settings.seed)
    made = generate(model, [m.model for m in pool.select("generation", "surrogate")],
                    [m.model for m in pool.select("generation", "reference")], x, y, settings, device=device)
    references = [TorchTarget(m.model, description=m.spec.name) for m in pool.select("calibration")]
    calibration = calibrate(made.inputs, made.labels, references, confidence=confidence, min_references=min_references)
    lineage = Lineage(made.inputs, made.labels, class_count(model, od.input_shape), calibration, made.to_dict(),
                      pool.manifest(), pool.source_sha256, datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return LineageBuild(lineage, pool)
