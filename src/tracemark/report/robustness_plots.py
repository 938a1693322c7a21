"""Robustness plots (matplotlib, headless): accuracy against attack strength, thief accuracy against p-value."""

from __future__ import annotations

import io
import math
from collections import defaultdict

from tracemark.lab.results import SuiteResult
from tracemark.verification.stats import log10_or_floor

KIND_COLOURS = {"finetune": "#1f77b4", "prune": "#ff7f0e", "quantize": "#2ca02c", "noise": "#d62728",
                "distill": "#9467bd", "extract": "#8c564b", "transform": "#e377c2"}
STRENGTH_AXES = {"finetune": "learning rate", "prune": "fraction of weights zeroed", "quantize": "bits",
                 "noise": "noise sigma (× weight std)", "distill": "queries", "extract": "queries",
                 "transform": "amount (sigma, factor, or 8 - bits)"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    _pyplot().close(fig)
    return buffer.getvalue()


def _x(record) -> float:
    # fine-tuning sweeps vary the learning rate at a fixed data budget: plot against that
    return float(record.params["lr"]) if record.kind == "finetune" and "lr" in record.params else record.strength


def accuracy_vs_strength(result: SuiteResult) -> bytes:
    """PNG: per attack kind, thief clean accuracy (solid) and trigger accuracy (dashed) against strength."""
    plt = _pyplot()
    records = [r for r in result.records if r.error is None]
    kinds = [k for k in KIND_COLOURS if any(r.kind == k for r in records)]
    cols = 3
    rows = max(1, math.ceil(len(kinds) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 4.2, rows * 3.2), squeeze=False)
    floor = 100 * result.marked_accuracy - result.budget_points
    for ax, kind in zip(axes.ravel(), kinds):
        by_label: dict[str, list] = defaultdict(list)
        for r in records:
            if r.kind == kind:
                by_label[r.label].append(r)
        for i, (label, recs) in enumerate(sorted(by_label.items())):
            recs.sort(key=_x)
            xs = [_x(r) for r in recs]
            colour = f"C{i}"
            ax.plot(xs, [100 * r.thief_accuracy for r in recs], "o-", color=colour, label=f"{label} clean")
            ax.plot(xs, [100 * r.trigger_accuracy for r in recs], "s--", color=colour, alpha=0.7, label=f"{label} triggers")
        ax.axhline(floor, color="grey", lw=0.8, ls=":", label=f"budget ({result.budget_points:g} pts)")
        ax.set_title(kind)
        if kind == "finetune":
            ax.set_xscale("log")
        ax.set_xlabel(STRENGTH_AXES[kind], fontsize=8)
        ax.set_ylabel("accuracy (%)", fontsize=8)
        ax.set_ylim(-3, 103)
        ax.legend(fontsize=6, loc="lower left")
    for ax in axes.ravel()[len(kinds):]:
        ax.axis("off")
    fig.suptitle(f"{result.dataset}: accuracy against attack strength (solid: clean, dashed: triggers)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def accuracy_vs_pvalue(result: SuiteResult) -> bytes:
    """PNG: each attack as a point (thief accuracy, -log10 p); the removal region is shaded."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    records = [r for r in result.records if r.error is None]
    floor = 100 * result.marked_accuracy - result.budget_points
    threshold = -math.log10(result.alpha)
    ys_all = [min(-log10_or_floor(r.p_value), 300.0) for r in records] or [threshold]
    top = max(max(ys_all), threshold) * 1.1 + 1
    ax.axvspan(floor, 100.5, ymin=0, ymax=threshold / top, color="#d62728", alpha=0.12, label="mark removed")
    for kind, colour in KIND_COLOURS.items():
        pts = [r for r in records if r.kind == kind]
        if pts:
            ax.scatter([100 * r.thief_accuracy for r in pts], [min(-log10_or_floor(r.p_value), 300.0) for r in pts],
                       color=colour, label=kind, s=28, edgecolors="black", linewidths=0.4)
    ax.axhline(threshold, color="black", lw=0.8, ls="--", label=f"alpha = {result.alpha:.0e}")
    ax.axvline(floor, color="grey", lw=0.8, ls=":", label=f"marked − {result.budget_points:g} pts")
    ax.set_ylim(0, top)
    ax.set_xlabel("thief's clean accuracy (%)")
    ax.set_ylabel("evidence: −log10 p-value (p = 0 drawn at 300)")
    ax.set_title(f"{result.dataset}: what the thief keeps against the evidence left")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return _png(fig)
