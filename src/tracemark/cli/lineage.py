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
    model: Path = typer.Option(..., "--model", help="The owner's marked model (.safetensors written by tracemark; "
                                                    "with --arch, its weights)."),
    arch: Optional[str] = suspect.ARCH_OPT,
    input_shape: Optional[str] = suspect.INPUT_SHAPE_OPT,
    classes: Optional[int] = suspect.CLASSES_OPT,
    pool_arch: Optional[str] = typer.Option(None, "--pool-arch", help="Built-in architecture the pool's extraction and "
                                            "distillation surrogates take besides LeNet and an MLP (default: the model's "
                                            "own when it is built in, else small_cnn)."),
    data: str = typer.Option("digits", "--data", help=suspect.data_help("The owner's data", folders=True)),
    out: Path = typer.Option(..., "--out", "-o", help="Lineage file to write (MARKED.lineage)."),
    seed: int = typer.Option(0, help="Seed of the pool plan, the start images, the dropout and the splits."),
    pool_dir: Optional[Path] = typer.Option(None, "--pool-dir", help="Reference pool cache (default: OUT's folder/lineage-pool); "
                                            "models already there are loaded, never retrained."),
    n: int = typer.Option(300, "--n", help="Inputs kept (at most 300: verification asks each one; fewer give a looser null bound: on Fashion-MNIST 136 inputs missed a distilled copy that 219 caught)."),
    epsilon: float = typer.Option(0.25, help="L-infinity bound of the perturbation (images in [0, 1])."),
    steps: int = typer.Option(40, help="Sign-gradient steps per input."),
    calibration_references: int = typer.Option(10, help="Held-out independent references that calibrate the null."),
    epochs: int = typer.Option(10, help="Training epochs of each pool member."),
    device: Optional[str] = DEVICE_OPT,
    ledger: Optional[Path] = typer.Option(None, "--ledger", help=LEDGER_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Generate, calibrate and write a lineage fingerprint; with a ledger, commit its digest there."""
    from tracemark.cli._options import arch_model, load_data
    from tracemark.data import load_model
    from tracemark.data.devices import resolve_device
    from tracemark.data.models import ARCHITECTURES
    from tracemark.lineage import GenerationSettings, create_lineage, default_plan, record
    from tracemark.lineage.errors import LineageError

    resolve_device(device)
    if not 1 <= n <= 300:
        raise LineageError(f"--n {n}: keep between 1 and 300 inputs")
    if pool_arch is not None and pool_arch not in ARCHITECTURES:
        raise LineageError(f"--pool-arch {pool_arch!r}: not a built-in architecture; use one of {', '.join(sorted(ARCHITECTURES))}")
    if arch is not None:
        built_model = arch_model(arch, model, input_shape, classes)
        source, shape, own_arch = built_model.module, built_model.input_shape, None if built_model.from_factory else arch
    else:
        source = load_model(model)
        shape, own_arch = source.tracemark_spec.input_shape, source.tracemark_spec.arch
    owner = load_data(data, shape)
    settings = GenerationSettings(n=n, candidates=-(-10 * n // 3), epsilon=epsilon, steps=steps, seed=seed)
    plan = default_plan(seed, source_arch=pool_arch or own_arch or "small_cnn", epochs=epochs,
                        calibration_references=calibration_references)
    built = create_lineage(source, owner, pool_dir=pool_dir or out.parent / "lineage-pool", plan=plan, settings=settings,
                           device=device)
    built.lineage.save(out)
    record_event(ledger, record, built.lineage, quiet=as_json)
    emit(built, as_json)
    if not as_json:
        console.print(f"lineage -> {out}")


@lineage_app.command("check")
def check(
    suspect_model: Optional[Path] = typer.Argument(None, metavar="[SUSPECT]", help="Suspect model file: .safetensors, "
                                                   ".onnx or .pt2 (or give --url)."),
    lineage: Path = typer.Option(..., "--lineage", help="Lineage file written by `tracemark lineage new`."),
    url: Optional[str] = suspect.URL_OPT,
    field: str = suspect.FIELD_OPT,
    template: Optional[str] = suspect.TEMPLATE_OPT,
    header: list[str] = suspect.HEADER_OPT,
    api_key: Optional[str] = suspect.API_KEY_OPT,
    rate: Optional[float] = suspect.RATE_OPT,
    batch_size: int = suspect.BATCH_OPT,
    timeout: float = suspect.TIMEOUT_OPT,
    transcript: Optional[Path] = suspect.TRANSCRIPT_OPT,
    arch: Optional[str] = suspect.ARCH_OPT,
    input_shape: Optional[str] = suspect.INPUT_SHAPE_OPT,
    classes: Optional[int] = suspect.CLASSES_OPT,
    alpha: float = typer.Option(1e-9, help="False-accusation rate: call 'copy' only when p <= alpha."),
    suspect_since: Optional[datetime] = typer.Option(None, "--suspect-since", help="When the suspect was first seen "
                                                     "(ISO date or time); the commitment must be older."),
    ledger: Optional[Path] = typer.Option(None, "--ledger", help="Ledger holding the commitment (default: $TRACEMARK_LEDGER, if set)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Test a suspect (a model file, or a prediction API with --url) against a lineage fingerprint and print the result
    with its p-value. A remote suspect is asked each fingerprint input once (at most 300)."""
    from tracemark.cli._options import save_transcript, suspect_target
    from tracemark.lineage import LineageEvidence

    if (suspect_model is None) == (url is None):
        raise typer.BadParameter("give exactly one suspect: a model file or --url", param_hint="SUSPECT")
    evidence = LineageEvidence.load(lineage, ledger=ledger, suspect_since=suspect_since)  # a bad file: before any query
    fingerprint = evidence.lineage
    target = suspect_target(suspect_model, url, num_classes=fingerprint.num_classes, field=field, template=template,
                            header=header, api_key=api_key, budget=len(fingerprint.labels), rate=rate, batch_size=batch_size,
                            timeout=timeout, arch=arch, input_shape=fingerprint.input_shape, shape_option=input_shape,
                            classes_option=classes)
    try:
        result = evidence.test(target, alpha=alpha)
    finally:
        save_transcript(target, transcript, as_json)
    emit(result, as_json)


def register(root: typer.Typer) -> None:
    """Add ``lineage new`` and ``lineage check``."""
    root.add_typer(lineage_app, name="lineage")
