"""Plots (matplotlib, headless)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from tracemark._util.files import atomic_write_bytes
from tracemark.keys.triggerset import TriggerSet


def trigger_grid(triggers: TriggerSet, path: str | Path, max_images: int = 40, columns: int = 10, title: str = "") -> Path:
    """Write a PNG grid of trigger images, each captioned with its watermark label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(max_images, len(triggers))
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.25 + (0.4 if title else 0)))
    for i, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if i >= n:
            continue
        image = triggers.inputs[i]
        shown = image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))
        ax.imshow(shown, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"→{int(triggers.labels[i])}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue(), mode=0o600)
