"""Option helpers shared by CLI verbs: secrets, key loading, data sets and suspects.

Secrets never travel as option values (other users see command lines in ``ps``): they come
from an environment variable, a file, or a hidden prompt on a terminal.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from tracemark.keys import WatermarkKey, is_encrypted

if TYPE_CHECKING:
    from tracemark.data.factories import BuiltModel

PASSPHRASE_ENV = "TRACEMARK_KEY_PASSPHRASE"
API_KEY_ENV = "TRACEMARK_API_KEY"


def read_secret(what: str, default_env: str, *, env_var: str | None = None, file: Path | None = None,
                confirm: bool = False, other_sources: str = "") -> str:
    """A secret from ``file``, else ``$env_var``, else ``$default_env``, else a hidden prompt on a terminal.

    Raises :class:`~tracemark.errors.SecretMissingError` naming where to put it when none of
    these gives one (for example when stdin is not a terminal). ``other_sources`` is appended to
    that hint (e.g. "or --passphrase-file PATH").
    """
    from tracemark.errors import SecretMissingError

    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretMissingError(f"cannot read the {what} from {file} ({exc})") from exc
        secret = text[:-1] if text.endswith("\n") else text
        secret = secret[:-1] if secret.endswith("\r") else secret
        if not secret:
            raise SecretMissingError(f"{file} is empty; put the {what} in it")
        return secret
    if env_var is not None:
        secret = os.environ.get(env_var, "")
        if not secret:
            raise SecretMissingError(f"${env_var} is not set or empty; export the {what} in it")
        return secret
    secret = os.environ.get(default_env, "")
    if secret:
        return secret
    if not sys.stdin.isatty():
        hint = f"set ${default_env}" + (f" {other_sources}" if other_sources else "")
        raise SecretMissingError(f"the {what} is needed and there is no terminal to ask on: {hint}")
    return typer.prompt(what, hide_input=True, confirmation_prompt=confirm)


def read_passphrase(confirm: bool = False) -> str:
    """The watermark key passphrase from ``$TRACEMARK_KEY_PASSPHRASE``, else a hidden prompt."""
    return read_secret("key passphrase", PASSPHRASE_ENV, confirm=confirm)


def load_key(path: Path) -> WatermarkKey:
    """Load a key file, asking for its passphrase only when it is encrypted."""
    from tracemark.errors import KeyFileError

    if not path.is_file():
        raise KeyFileError(f"no key file at {path}")
    passphrase = read_passphrase() if is_encrypted(path) else None
    return WatermarkKey.load(path, passphrase)


DATA_SOURCES = ("digits (bundled), mnist or fashion-mnist (mnist.npz / fashion_mnist.npz read from $TRACEMARK_DATA_DIR, "
                "else shared/data beside the checkout), or a path to an .npz")
FOLDER_SOURCES = ("digits (bundled), mnist or fashion-mnist (mnist.npz / fashion_mnist.npz read from $TRACEMARK_DATA_DIR, "
                  "else shared/data beside the checkout), a path to an .npz, or a folder read item by item: an image "
                  "folder (one subfolder of PNG/JPEG images per class) or a memmap folder (images.npy + labels.npy)")


def load_data(text: str, input_shape: tuple[int, int, int] | None = None):
    """``--data``: a named set or an ``.npz`` as :class:`~tracemark.data.ImageData`, or a folder as an on-disk Dataset.

    An existing directory is a memmap folder when it holds ``images.npy``, else an image folder, whose images
    are resized to ``input_shape`` when given (else the first image's size and colour decide). The names
    win over a folder of the same name in the current directory: write ``./mnist`` for that one.
    """
    from tracemark.data import load_dataset
    from tracemark.data.ondisk import open_folder

    from tracemark.errors import DatasetError

    named = text.lower().replace("_", "-") in ("digits", "mnist", "fashion-mnist")
    if not named and Path(text).is_dir():
        return open_folder(text, input_shape)
    if not named and not Path(text).exists() and Path(text).suffix != ".npz":
        raise DatasetError(f"--data {text}: no such folder, and not digits, mnist, fashion-mnist or an .npz file")
    return load_dataset(text)


def data_help(what: str, folders: bool = False) -> str:
    """``--data`` help text: ``what`` the data is for, then where each name is read from (``folders``: the verb
    reads it with :func:`load_data`, which also takes image and memmap folders)."""
    return f"{what}: {FOLDER_SOURCES if folders else DATA_SOURCES}."


@contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Print the warnings raised inside (a legacy owner key's, for one) as one ``warning:`` line each."""
    import warnings

    from tracemark.cli._output import error_console

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        error_console.print(f"[yellow]warning:[/] {warning.message}", highlight=False, soft_wrap=True)


LEDGER_HELP = "Append this event to the evidence ledger at this path (default: $TRACEMARK_LEDGER, if set)."


def record_event(ledger_path: Path | None, record, *args, quiet: bool = False, **kwargs) -> None:
    """Append an event with ``record(ledger, *args, **kwargs)`` when a ledger is configured."""
    from tracemark.cli._output import error_console
    from tracemark.ledger import configured_ledger

    with warnings_as_lines():
        ledger = configured_ledger(ledger_path)
    if ledger is None:
        return
    entry = record(ledger, *args, **kwargs)
    if not quiet:
        error_console.print(f"ledger: appended entry #{entry.seq} ({entry.event})")


def parse_headers(headers: list[str]) -> dict[str, str]:
    """``--header 'Name: value'`` options as a dict; a value written ``$VAR`` is read from that environment variable."""
    import re

    parsed = {}
    for header in headers:
        name, sep, value = header.partition(":")
        if not sep:
            raise typer.BadParameter(f"header {header!r} is not 'Name: value'", param_hint="--header")
        value = value.strip()
        if re.fullmatch(r"\$[A-Za-z_][A-Za-z0-9_]*", value):
            value = read_secret(f"value of header {name.strip()}", value[1:], env_var=value[1:])
        parsed[name.strip()] = value
    return parsed


ARCH_HELP = ("Build the model with this: a built-in architecture (small_cnn, lenet, mlp, resnet18) or your own "
             "package.module:factory, imported from this option only (never from a file).")
ARCH_OPT = typer.Option(None, "--arch", help=ARCH_HELP + " With --model: load its weights (a state dict) strictly.")
INPUT_SHAPE_OPT = typer.Option(None, "--input-shape", metavar="C,H,W",
                               help="With --arch: the model's input shape, if neither the factory nor the key gives it.")
CLASSES_OPT = typer.Option(None, "--classes", help="With --arch: the class count, if neither the factory nor the key gives it.")

DEVICE_OPT = typer.Option(None, "--device", help="Torch device to run on: cuda, cuda:N, mps or cpu (default: the best one here).")
PRECISION_OPT = typer.Option(None, "--precision", help="Mixed precision for training passes: bf16, or fp16 (CUDA only); default full float32.")


def parse_input_shape(text: str | None) -> tuple[int, int, int] | None:
    """``--input-shape C,H,W`` as a tuple, or ``None`` when not given."""
    from tracemark.data.factories import check_shape
    from tracemark.errors import InvalidOptionError

    if text is None:
        return None
    try:
        return check_shape(tuple(int(d) for d in text.split(",")))
    except ValueError as exc:
        raise InvalidOptionError(f"--input-shape {text!r}: write three positive numbers C,H,W (like 1,28,28)") from exc


def arch_model(arch: str, weights: Path | None, input_shape: str | None, classes: int | None, *,
               default_shape: tuple[int, int, int] | None = None, default_classes: int | None = None,
               seed: int | None = None) -> BuiltModel:
    """The :class:`~tracemark.data.factories.BuiltModel` for ``--arch`` (and ``--model`` weights, if given)."""
    from tracemark.data.factories import build_arch

    return build_arch(arch, weights=weights, input_shape=parse_input_shape(input_shape), num_classes=classes,
                      default_shape=default_shape, default_classes=default_classes, seed=seed)


# The options every command that asks a suspect shares (verify, trace, responses check).
MODEL_OPT = typer.Option(None, help="Suspect model file: .safetensors, .onnx, .pt2 or a .pt state dict.")
URL_OPT = typer.Option(None, help="Suspect prediction API (HTTP POST endpoint).")
FIELD_OPT = typer.Option("labels", help="With --url: dotted path of the answers in the JSON response.")
TEMPLATE_OPT = typer.Option(None, help='With --url: JSON request body with "{{inputs}}" or "{{inputs_flat}}".')
HEADER_OPT = typer.Option([], help="With --url: extra header 'Name: value' (repeatable); a value written '$VAR' "
                                   "(quoted) is read from that environment variable, so a secret stays out of `ps`.")


def _api_key(value: str | None) -> str | None:
    """``--api-key-env VAR``: the bearer token in ``$VAR`` (default ``$TRACEMARK_API_KEY``), or ``None``."""
    if value is None:
        return os.environ.get(API_KEY_ENV) or None
    return read_secret("API key", API_KEY_ENV, env_var=value)


API_KEY_OPT = typer.Option(None, "--api-key-env", metavar="VAR", callback=_api_key,
                           help=f"With --url: read the bearer token from this environment variable (default ${API_KEY_ENV}).")
BUDGET_OPT = typer.Option(None, help="With --url: most inputs to send.")
RATE_OPT = typer.Option(None, help="With --url: most requests per second.")
BATCH_OPT = typer.Option(32, help="Inputs per request.")
TIMEOUT_OPT = typer.Option(10.0, help="With --url: seconds per request.")
TRANSCRIPT_OPT = typer.Option(None, help="With --url: write every query and answer here (JSON).")


def suspect_target(model: Path | None, url: str | None, *, num_classes: int | None = None, field: str = "labels",
                   probabilities_field: str | None = None, template: str | None = None, header: list[str] | None = None,
                   api_key: str | None = None, budget: int | None = None, rate: float | None = None, batch_size: int = 32,
                   timeout: float = 10.0, arch: str | None = None, input_shape: tuple[int, int, int] | None = None,
                   shape_option: str | None = None, classes_option: int | None = None):
    """The suspect of ``verify``/``trace``/``responses check``: a local model file or an HTTP prediction API (exactly one).

    With ``arch`` (``--arch``), the model is built by it and ``model`` holds its weights; ``input_shape``
    and ``num_classes`` (the key's) are the defaults for its shape.
    """
    import json

    from tracemark.targets import load_target

    if (model is None) == (url is None):
        raise typer.BadParameter("give exactly one of --model or --url")
    if arch is not None and model is None:
        raise typer.BadParameter("--arch goes with --model (the weights file)", param_hint="--arch")
    if arch is not None:
        from tracemark.targets.local import TorchTarget

        built = arch_model(arch, model, shape_option, classes_option, default_shape=input_shape, default_classes=num_classes)
        return TorchTarget(built.module, description=str(model), input_shape=built.input_shape, num_classes=built.num_classes)
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
