"""Figures of the ownership report (matplotlib, headless): the null distribution, the triggers beside the answers."""

from __future__ import annotations

import io

import numpy as np

MATCH_COLOUR = "#2e7d32"
MISS_COLOUR = "#c62828"
SUSPECT_COLOUR = "#c62828"
NULL_COLOUR = "#607d8b"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    _pyplot().close(fig)
    return buffer.getvalue()


def _shown(image: np.ndarray) -> np.ndarray:
    return image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))


def null_distribution_png(matches: int, answered: int, null_rate: float, threshold: int | None) -> bytes:
    """PNG: the chance of each match count for a model that never saw the key (binomial), and the suspect's count."""
    from scipy import stats

    plt = _pyplot()
    counts = np.arange(answered + 1)
    pmf = stats.binom.pmf(counts, answered, null_rate)
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    ax.bar(counts, pmf, width=1.0, color=NULL_COLOUR, label="a model that never saw our key")
    if threshold is not None:
        ax.axvline(threshold - 0.5, color="black", ls="--", lw=1, label=f"{threshold} or more: called a copy")
    ax.axvline(matches, color=SUSPECT_COLOUR, lw=3, label=f"the suspect: {matches}")
    ax.set_xlim(-1, answered + 1)
    ax.set_ylim(0, float(pmf.max()) * 1.15)
    ax.set_xlabel(f"secret answers matched, out of {answered}")
    ax.set_ylabel("chance")
    ax.set_title("How many secret answers chance alone would give, and what the suspect gave", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return _png(fig)


def answers_grid_png(inputs: np.ndarray, labels: np.ndarray, answers: list[int], max_images: int = 100, columns: int = 10) -> bytes:
    """PNG: each trigger image captioned with its secret answer and the suspect's (green: same, red: different)."""
    plt = _pyplot()
    n = min(max_images, len(inputs))
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.75, rows * 0.95))
    for i, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        answer = int(answers[i]) if i < len(answers) else -1
        colour = MATCH_COLOUR if answer == int(labels[i]) else MISS_COLOUR
        ax.imshow(_shown(inputs[i]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        for spine in ax.spines.values():
            spine.set_color(colour)
            spine.set_linewidth(2)
        got = "—" if answer < 0 else str(answer)
        ax.set_title(f"{int(labels[i])} / {got}", fontsize=7, color=colour, pad=2)
    fig.tight_layout(pad=0.3, h_pad=0.4, w_pad=0.2)
    return _png(fig, dpi=110)


def thumbnail_png(image: np.ndarray, scale: int = 6) -> bytes:
    """PNG of one trigger image (C×H×W in [0, 1]), enlarged ``scale`` times with square pixels."""
    shown = np.clip(_shown(image), 0.0, 1.0)
    big = np.repeat(np.repeat(shown, scale, axis=0), scale, axis=1)
    buffer = io.BytesIO()
    _pyplot().imsave(buffer, big, cmap="gray", vmin=0, vmax=1, format="png")
    return buffer.getvalue()
