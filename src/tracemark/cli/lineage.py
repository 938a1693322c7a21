"""``tracemark lineage new`` (a committed behavioural fingerprint of a marked model) and ``lineage check``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Optional

import typer

from tracemark.cli import _options as suspect
from tracemark.cli._options import DEVICE_OPT, LEDGER_HELP, record_event
from tracemark.cli._output import console, emit

lineage_app = typer.Typer(help="Behavioural fingerprints that models derived from yours inherit (conferrable examples).",
                          no_args_is_help=True)


@lineage_app.command("new")
def new(
    model: Path = typer.Option(..., "--model", help="The owner's marked model (.safetensors written by tracemark)."),
    data: str = typer.Option("digits", "--data", help=suspect.data_help("The owner's data", folders=True)),
    out: Path = typer.Option(..., "--out", "-o", help="Lineage file to write (MARKED.lineage)."),
    seed: int = typer.Option(0, help="Seed of the pool plan, the start images, the dropout and the splits."),
    pool_dir: Optional[Path] = typer.Option(None, "--pool-dir", help="Reference pool cache (default: OUT's folder/lineage-pool); "
                                            "models already there are loaded, never retrained."),
    n: int = typer.Option(100, "--n", help="Inputs kept (at most 300: verification asks each one)."),
    epsilon: float = typer.Option(0.25, help="L-infinity bound of the perturbation (images in [0, 1])."),
    steps: int = typer.Option(40, help="Sign-gradient steps per input."),
    calibration_references: int = typer.Option(8, help="Held-out independent references that calibrate the null."),
    epochs: int = typer.Option(10, help="Training epochs of each pool member."),
    device: Optional[str] = DEVICE_OPT,
    ledger: Optional[Path] = typer.Option(None, "--ledger", help=LEDGER_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Generate, calibrate and write a lineage fingerprint; with a ledger, commit its digest there."""
    from tracemark.cli._options import load_data
    from tracemark.data import load_model
    from tracemark.data.devices import resolve_device
    from tracemark.lineage import GenerationSettings, create_lineage, default_plan, record
    from tracemark.lineage.errors import LineageError

    resolve_device(device)
    if not 1 <= n <= 300:
        raise LineageError(f"--n {n}: keep between 1 and 300 inputs")
    source = load_model(model)
    owner = load_data(data, source.tracemark_spec.input_shape)
    settings = GenerationSettings(n=n, candidates=3 * n, epsilon=epsilon, steps=steps, seed=seed)
    plan = default_plan(seed, source_arch=source.tracemark_spec.arch, epochs=epochs, calibration_references=calibration_references)
    built = create_lineage(source, owner, pool_dir=pool_dir or out.parent / "lineage-pool", plan=plan, settings=settings,
                           device=device)
    built.lineage.save(out)
    record_event(ledger, record, built.lineage, quiet=as_json)
    emit(built, as_json)
    if not as_json:
        console.print(f"lineage -> {out}")


@lineage_app.command("check")
def check(
    suspect_model: Path = typer.Argument(..., metavar="SUSPECT", help="Suspect model file: .safetensors, .onnx or .pt2."),
    lineage: Path = typer.Option(..., "--lineage", help="Lineage file written by `tracemark lineage new`."),
    alpha: float = typer.Option(1e-9, help="False-accusation rate: call 'copy' only when p <= alpha."),
    suspect_since: Optional[datetime] = typer.Option(None, "--suspect-since", help="When the suspect was first seen "
                                                     "(ISO date or time); the commitment must be older."),
    ledger: Optional[Path] = typer.Option(None, "--ledger", help="Ledger holding the commitment (default: $TRACEMARK_LEDGER, if set)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Test a suspect against a lineage fingerprint and print the result with its p-value."""
    from tracemark.lineage import LineageEvidence
    from tracemark.targets import load_target

    evidence = LineageEvidence.load(lineage, ledger=ledger, suspect_since=suspect_since)
    emit(evidence.test(load_target(suspect_model), alpha=alpha), as_json)


def register(root: typer.Typer) -> None:
    """Add ``lineage new`` and ``lineage check``."""
    root.add_typer(lineage_app, name="lineage")
