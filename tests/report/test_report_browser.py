"""The HTML report rendered in real headless Chromium: the screenshot shows the verdict banner, the timeline, the triggers."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.report.conftest import MISSED, Case, Made

CHROMIUM = "/usr/bin/chromium"
WIDTH, HEIGHT = 1100, 4200
BANNER = (0x8E, 0x1B, 0x1B)      # .verdict-copy
TIMELINE = (0x15, 0x65, 0xC0)    # ol.timeline li border
MATCH = (0x2E, 0x7D, 0x32)       # .trigger.match border
MISS = (0xC6, 0x28, 0x28)        # .trigger.miss border


def screenshot(html: Path, png: Path, profile: Path, width: int = WIDTH, height: int = HEIGHT) -> Image.Image:
    """Render ``html`` with headless Chromium (no network, throw-away profile) and return the screenshot."""
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={width},{height}", html.resolve().as_uri()],
        check=True, capture_output=True, timeout=120, env={**os.environ, "HOME": str(profile)},
    )
    return Image.open(png).convert("RGB")


def _rows(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 8) -> np.ndarray:
    """How many pixels of each row have ``colour``."""
    near = np.abs(pixels.astype(int) - np.array(colour)).max(axis=2) <= tolerance
    return near.sum(axis=1)


@pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
def test_chromium_shows_verdict_timeline_and_triggers(case: Case, made: Made, tmp_path: Path) -> None:
    shutil.copy(made.html, tmp_path / "report.html")
    image = screenshot(tmp_path / "report.html", tmp_path / "shot.png", tmp_path / "profile")
    pixels = np.asarray(image)
    assert pixels.shape[:2] == (HEIGHT, WIDTH) and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # not blank

    banner = np.flatnonzero(_rows(pixels, BANNER) > WIDTH * 0.8)       # a full-width red band: the COPY verdict
    timeline = np.flatnonzero(_rows(pixels, TIMELINE) >= 8)            # the blue bars left of each timeline entry
    matches = np.flatnonzero(_rows(pixels, MATCH) >= 20)               # green trigger frames
    assert banner.size > 60 and banner.min() < 10, "no verdict banner at the top"
    assert timeline.size > 4 * 20, "no timeline entries"
    assert matches.size, "no trigger frames"
    assert banner.max() < timeline.min() < timeline.max() < matches.min(), "not in the order verdict, timeline, triggers"
    # four separate timeline entries: runs of blue rows separated by gaps
    assert int(np.sum(np.diff(timeline) > 1)) + 1 == 4
    # inside the trigger area: red frames round the missed triggers, and the digit images drawn in many grey levels
    top, bottom = matches.min(), matches.max()
    misses = _rows(pixels[top:bottom], MISS)
    assert (misses >= 8).sum() >= 60, "no red frame round a missed trigger"
    assert misses.sum() * (100 - len(MISSED)) < _rows(pixels[top:bottom], MATCH).sum() * len(MISSED) * 2
    area = pixels[top:bottom]
    grey = area[(np.abs(area[..., 0].astype(int) - area[..., 1]) < 3) & (np.abs(area[..., 1].astype(int) - area[..., 2]) < 3)]
    assert len(np.unique(grey[:, 0])) > 12, "the trigger images are not drawn"
    dark = (grey[:, 0] < 60).sum()
    assert dark > 2000, "no dark pixels of the digit images"
