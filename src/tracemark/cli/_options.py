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


def suspect_target(model: Path | None, url: str | None, *, num_classes: int, field: str, template: str | None,
                   header: list[str], api_key: str | None, budget: int | None, rate: float | None, batch_size: int,
                   timeout: float):
    """The suspect of ``verify``/``trace``: a local model file or an HTTP prediction API (exactly one)."""
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
    return HttpTarget(url, headers=parse_headers(header), api_key=api_key, request_template=request_template,
                      response_field=field, batch_size=batch_size, timeout=timeout, max_queries=budget, rate=rate,
                      num_classes=num_classes)

