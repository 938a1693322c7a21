"""``tracemark verify``: check a local model file or a remote prediction API for a key's mark."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tracemark.cli import _options as suspect
from tracemark.cli._options import LEDGER_HELP, load_key, record_event, save_transcript, suspect_target
from tracemark.cli._output import emit


def verify(
    key: Path = typer.Option(..., help="Watermark key file."),
    model: Optional[Path] = suspect.MODEL_OPT,
    url: Optional[str] = suspect.URL_OPT,
    field: str = suspect.FIELD_OPT,
    template: Optional[str] = suspect.TEMPLATE_OPT,
    header: list[str] = suspect.HEADER_OPT,
    api_key: Optional[str] = suspect.API_KEY_OPT,
    budget: Optional[int] = suspect.BUDGET_OPT,
    rate: Optional[float] = suspect.RATE_OPT,
    batch_size: int = suspect.BATCH_OPT,
    timeout: float = suspect.TIMEOUT_OPT,
    transcript: Optional[Path] = suspect.TRANSCRIPT_OPT,
    arch: Optional[str] = suspect.ARCH_OPT,
    input_shape: Optional[str] = suspect.INPUT_SHAPE_OPT,
    classes: Optional[int] = suspect.CLASSES_OPT,
    reference: list[Path] = typer.Option([], help="Independently trained model file for an empirical null (repeatable)."),
    reference_arch: Optional[str] = typer.Option(
        None, "--reference-arch", help="Build every --reference with this (as --arch) and load its file as weights."),
    alpha: float = typer.Option(1e-9, help="False-accusation rate: call 'copy' only when p <= alpha."),
    max_queries: Optional[int] = typer.Option(None, help="Ask at most this many triggers."),
    ledger: Optional[Path] = typer.Option(None, "--ledger", help=LEDGER_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Check a suspect for the watermark and print the verdict with its p-value."""
    from tracemark.targets import load_target
    from tracemark.verification import verify as run_verify

    wm_key = load_key(key)
    target = suspect_target(model, url, num_classes=wm_key.num_classes, field=field, template=template, header=header,
                            api_key=api_key, budget=budget, rate=rate, batch_size=batch_size, timeout=timeout,
                            arch=arch, input_shape=wm_key.input_shape, shape_option=input_shape, classes_option=classes)
    references = [_reference(path, reference_arch, wm_key, input_shape, classes) if reference_arch else load_target(path)
                  for path in reference]
    try:
        verdict = run_verify(wm_key, target, alpha=alpha, max_queries=max_queries, references=references,
                             batch_size=batch_size)
    finally:
        save_transcript(target, transcript, as_json)
    from tracemark.ledger import record_verification

    record_event(ledger, record_verification, verdict, transcript=transcript if url is not None else None, quiet=as_json)
    emit(verdict, as_json)


def _reference(path: Path, arch: str, wm_key, input_shape: Optional[str], classes: Optional[int]):
    """A ``--reference`` built by ``--reference-arch`` with ``path`` as its weights (shape and classes as for ``--arch``)."""
    from tracemark.targets.local import TorchTarget

    built = suspect.arch_model(arch, path, input_shape, classes, default_shape=wm_key.input_shape,
                               default_classes=wm_key.num_classes)
    return TorchTarget(built.module, description=str(path), input_shape=built.input_shape, num_classes=built.num_classes)


def register(root: typer.Typer) -> None:
    """Add ``verify``."""
    root.command("verify")(verify)
