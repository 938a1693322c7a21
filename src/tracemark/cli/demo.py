"""``tracemark demo``."""

from __future__ import annotations

from pathlib import Path

import typer

from tracemark.cli._output import emit


def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", "-o", help="Folder for the demo's files."),
    seed: int = typer.Option(0, help="Seed for training, the demo key and the thief (a run is reproducible)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Train, mark and verify on scikit-learn's bundled digits, end to end (about 15 s on 2 idle cores; longer when busy)."""
    from tracemark.demo import run_demo

    result = run_demo(out, seed=seed, show_progress=not as_json)
    emit(result, as_json)
    if not result.all_as_expected:
        raise typer.Exit(1)


def register(root: typer.Typer) -> None:
    """Add ``demo``."""
    root.command("demo")(demo)
