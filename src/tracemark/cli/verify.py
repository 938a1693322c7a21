"""``tracemark verify``: check a local model file or a remote prediction API for a key's mark."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tracemark.cli._options import LEDGER_HELP, load_key, record_event, suspect_target
from tracemark.cli._output import console, emit


def verify(
    key: Path = typer.Option(..., help="Watermark key file."),
    model: Optional[Path] = typer.Option(None, help="Suspect model file: .safetensors, .onnx, .pt2 or a .pt state dict."),
    url: Optional[str] = typer.Option(None, help="Suspect prediction API (HTTP POST endpoint)."),
    field: str = typer.Option("labels", help="With --url: dotted path of the answers in the JSON response."),
    template: Optional[str] = typer.Option(None, help='With --url: JSON request body with "{{inputs}}" or "{{inputs_flat}}".'),
    header: list[str] = typer.Option([], help="With --url: extra header 'Name: value' (repeatable)."),
    api_key: Optional[str] = typer.Option(None, envvar="TRACEMARK_API_KEY", help="With --url: bearer token."),
    budget: Optional[int] = typer.Option(None, help="With --url: most inputs to send."),
    rate: Optional[float] = typer.Option(None, help="With --url: most requests per second."),
    batch_size: int = typer.Option(32, help="Inputs per request."),
    timeout: float = typer.Option(10.0, help="With --url: seconds per request."),
    transcript: Optional[Path] = typer.Option(None, help="With --url: write every query and answer here (JSON)."),
    reference: list[Path] = typer.Option([], help="Independently trained model file for an empirical null (repeatable)."),
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
                            api_key=api_key, budget=budget, rate=rate, batch_size=batch_size, timeout=timeout)
    references = [load_target(path) for path in reference]
    try:
        verdict = run_verify(wm_key, target, alpha=alpha, max_queries=max_queries, references=references,
                             batch_size=batch_size)
    finally:
        if url is not None and transcript is not None:
            target.save_transcript(transcript)  # type: ignore[union-attr]
            if not as_json:
                console.print(f"transcript of {len(target.transcript)} requests -> {transcript}")  # type: ignore[union-attr]
    from tracemark.ledger import record_verification

    record_event(ledger, record_verification, verdict, transcript=transcript if url is not None else None, quiet=as_json)
    emit(verdict, as_json)


def register(root: typer.Typer) -> None:
    """Add ``verify``."""
    root.command("verify")(verify)
