"""Option helpers shared by CLI verbs: passphrases and key loading."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from tracemark.keys import WatermarkKey, is_encrypted

PASSPHRASE_ENV = "TRACEMARK_KEY_PASSPHRASE"


def read_passphrase(confirm: bool = False) -> str:
    """The key passphrase from ``$TRACEMARK_KEY_PASSPHRASE``, else a hidden prompt."""
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env:
        return from_env
    return typer.prompt("key passphrase", hide_input=True, confirmation_prompt=confirm)


def load_key(path: Path) -> WatermarkKey:
    """Load a key file, asking for its passphrase only when it is encrypted."""
    from tracemark.errors import KeyFileError

    if not path.is_file():
        raise KeyFileError(f"no key file at {path}")
    passphrase = read_passphrase() if is_encrypted(path) else None
    return WatermarkKey.load(path, passphrase)


LEDGER_HELP = "Append this event to the evidence ledger at this path (default: $TRACEMARK_LEDGER, if set)."


def record_event(ledger_path: Path | None, record, *args, quiet: bool = False, **kwargs) -> None:
    """Append an event with ``record(ledger, *args, **kwargs)`` when a ledger is configured."""
    from tracemark.cli._output import error_console
    from tracemark.ledger import configured_ledger

    ledger = configured_ledger(ledger_path)
    if ledger is None:
        return
    entry = record(ledger, *args, **kwargs)
    if not quiet:
        error_console.print(f"ledger: appended entry #{entry.seq} ({entry.event})")


def parse_headers(headers: list[str]) -> dict[str, str]:
    """``--header 'Name: value'`` options as a dict."""
    parsed = {}
    for header in headers:
        name, sep, value = header.partition(":")
        if not sep:
            raise typer.BadParameter(f"header {header!r} is not 'Name: value'", param_hint="--header")
        parsed[name.strip()] = value.strip()
    return parsed


# The options every command that asks a suspect shares (verify, trace, responses check).
MODEL_OPT = typer.Option(None, help="Suspect model file: .safetensors, .onnx, .pt2 or a .pt state dict.")
URL_OPT = typer.Option(None, help="Suspect prediction API (HTTP POST endpoint).")
FIELD_OPT = typer.Option("labels", help="With --url: dotted path of the answers in the JSON response.")
TEMPLATE_OPT = typer.Option(None, help='With --url: JSON request body with "{{inputs}}" or "{{inputs_flat}}".')
HEADER_OPT = typer.Option([], help="With --url: extra header 'Name: value' (repeatable).")
API_KEY_OPT = typer.Option(None, envvar="TRACEMARK_API_KEY", help="With --url: bearer token.")
BUDGET_OPT = typer.Option(None, help="With --url: most inputs to send.")
RATE_OPT = typer.Option(None, help="With --url: most requests per second.")
BATCH_OPT = typer.Option(32, help="Inputs per request.")
TIMEOUT_OPT = typer.Option(10.0, help="With --url: seconds per request.")
TRANSCRIPT_OPT = typer.Option(None, help="With --url: write every query and answer here (JSON).")


def suspect_target(model: Path | None, url: str | None, *, num_classes: int | None = None, field: str = "labels",
                   probabilities_field: str | None = None, template: str | None = None, header: list[str] | None = None,
                   api_key: str | None = None, budget: int | None = None, rate: float | None = None, batch_size: int = 32,
                   timeout: float = 10.0):
    """The suspect of ``verify``/``trace``/``responses check``: a local model file or an HTTP prediction API (exactly one)."""
    import json

    from tracemark.targets import load_target

    if (model is None) == (url is None):
        raise typer.BadParameter("give exactly one of --model or --url")
    if model is not None:
        return load_target(model)
    from tracemark.targets.http import HttpTarget

    try:
        request_template = json.loads(template) if template else None
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--template") from exc
    return HttpTarget(url, headers=parse_headers(header or []), api_key=api_key, request_template=request_template,
                      response_field=field, probabilities_field=probabilities_field, batch_size=batch_size, timeout=timeout,
                      max_queries=budget, rate=rate, num_classes=num_classes)


def save_transcript(target, path: Path | None, quiet: bool) -> None:
    """Write a remote suspect's transcript (every query and answer) to ``path``; nothing for a local model."""
    if path is None or not hasattr(target, "save_transcript"):
        return
    target.save_transcript(path)
    if not quiet:
        from tracemark.cli._output import console

        console.print(f"transcript of {len(target.transcript)} requests -> {path}")
