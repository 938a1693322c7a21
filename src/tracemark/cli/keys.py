"""``tracemark key new|show``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tracemark.cli._options import LEDGER_HELP, data_help, load_key, read_passphrase, record_event
from tracemark.cli._output import console, emit

key_app = typer.Typer(help="Create and inspect watermark keys.", no_args_is_help=True)


@key_app.command("new")
def new(
    out: Path = typer.Option(..., "--out", "-o", help="Key file to write."),
    kind: str = typer.Option("content", help="content | unrelated | noise | abstract"),
    data: str = typer.Option("digits", help=data_help("Dataset the source images come from", folders=True)),
    n_triggers: int = typer.Option(100, "--triggers", "-n", help="Number of trigger inputs."),
    labels: str = typer.Option("keyed", help="keyed (secret random label per trigger, exact null) | single (all -> --target)."),
    target: Optional[int] = typer.Option(None, help="Watermark class for --labels single."),
    source: Optional[list[int]] = typer.Option(None, help="Source class(es) for content/noise keys (repeatable)."),
    drawing: Optional[Path] = typer.Option(None, help="PNG of the secret drawing (content keys); default: generated from the seed."),
    name: str = typer.Option("", help="A label for the key (stored inside it)."),
    encrypt: bool = typer.Option(False, "--encrypt", help="Encrypt the key file with a passphrase ($TRACEMARK_KEY_PASSPHRASE or a prompt)."),
    triggers_png: Optional[Path] = typer.Option(None, "--triggers-png", help="Also write a PNG grid of the triggers (secret!)."),
    ledger: Optional[Path] = typer.Option(None, "--ledger", help=LEDGER_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Make a new secret watermark key and write it to a file."""
    from tracemark.cli._options import load_data
    from tracemark.data import ImageData
    from tracemark.errors import InvalidOptionError
    from tracemark.keys import KINDS, WatermarkKey

    if out.exists():
        raise typer.BadParameter(f"{out} exists; refusing to overwrite a key", param_hint="--out")
    if kind not in KINDS:
        raise InvalidOptionError(f"--kind {kind} is not a key kind; choose one of {', '.join(KINDS)}")
    if labels not in ("keyed", "single"):
        raise InvalidOptionError(f"--labels {labels}: choose keyed (the default) or single")
    if labels == "single" and target is None:
        raise InvalidOptionError("--labels single needs --target CLASS: the class every trigger is labelled with")
    passphrase = read_passphrase(confirm=True) if encrypt else None  # before the work, so a missing one fails fast
    dataset = load_data(data)
    if target is not None and not 0 <= target < dataset.num_classes:
        raise InvalidOptionError(f"--target {target} is not a class of {dataset.name}; give 0 to {dataset.num_classes - 1}")
    in_memory = isinstance(dataset, ImageData)  # else an on-disk Dataset, which the key samples from
    images = None if kind == "abstract" else (dataset.x_train if in_memory else dataset)
    try:
        key = WatermarkKey.generate(
            kind,
            images=images,
            labels=dataset.y_train if images is not None and in_memory else None,
            num_classes=dataset.num_classes,
            input_shape=dataset.input_shape,
            n_triggers=n_triggers,
            label_mode=labels,  # type: ignore[arg-type]
            target_label=target,
            source_labels=source or None,
            drawing_png=drawing,
            name=name,
        )
    except ValueError as exc:
        raise InvalidOptionError(f"cannot make this key: {exc}; change --triggers, --source or --target") from exc
    key.save(out, passphrase)
    from tracemark.ledger import record_key_created

    record_event(ledger, record_key_created, key, quiet=as_json)
    if triggers_png:
        from tracemark.report import trigger_grid

        trigger_grid(key.triggers(), triggers_png, title=f"{kind} triggers")
    if not as_json:
        console.print(f"wrote key [bold]{out}[/] (keep it secret; publish only the commitment)")
    emit(key.describe() if as_json else key, as_json)


@key_app.command("show")
def show(
    path: Path = typer.Argument(..., help="Key file."),
    triggers_png: Optional[Path] = typer.Option(None, "--triggers-png", help="Write a PNG grid of the triggers (secret!)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a key's public description (commitment, kind, shape) without its secrets."""
    key = load_key(path)
    if triggers_png:
        from tracemark.report import trigger_grid

        trigger_grid(key.triggers(), triggers_png, title=f"{key.kind} triggers")
    if as_json:
        emit(key.describe(), True)
    else:
        for field, value in key.describe().items():
            console.print(f"{field:>12}: {value}", highlight=False)


def register(root: typer.Typer) -> None:
    """Mount ``key`` on the root app."""
    root.add_typer(key_app, name="key")
