"""HTML reports rendered with jinja2; plots are embedded as PNG data, so the report is one file."""

from __future__ import annotations

import base64
import json
import math
import tempfile
from pathlib import Path

from tracemark._util.files import atomic_write_text
from tracemark.keys.triggerset import TriggerSet
from tracemark.lab.results import SuiteResult
from tracemark.report.plots import trigger_grid
from tracemark.report.robustness_plots import accuracy_vs_pvalue, accuracy_vs_strength

TEMPLATES = Path(__file__).parent / "templates"


def _environment():
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    return Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))


def _pct(value: float) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _trigger_png(triggers: TriggerSet) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = trigger_grid(triggers, Path(tmp) / "triggers.png", max_images=30)
        return path.read_bytes()


def robustness_report(result: SuiteResult, path: str | Path, triggers: TriggerSet | None = None) -> Path:
    """Write a self-contained HTML report of a robustness run: verdict table, plots, triggers, configuration."""
    plots = {
        "strength": _b64(accuracy_vs_strength(result)),
        "pvalue": _b64(accuracy_vs_pvalue(result)),
        "triggers": _b64(_trigger_png(triggers)) if triggers is not None else None,
    }
    html = _environment().get_template("robustness.html.j2").render(
        r=result, summary=result.summary(), plots=plots, pct=_pct,
        config=json.dumps(result.config, indent=2, sort_keys=True, default=str),
    )
    return atomic_write_text(path, html)
