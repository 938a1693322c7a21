"""The ``tracemark`` command line: a thin typer layer over the public Python API.

Each verb group lives in its own module exposing ``register(root)``, which adds its
commands (or a sub-``Typer``) to the root app; :mod:`tracemark.cli._commands` lists them.
Errors from the API (:class:`~tracemark.errors.TracemarkError`) are printed as one red
line and exit with status 2.
"""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="tracemark",
    help="Watermark, ship, serve, trace and prove ownership of trained ML models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def build_app() -> typer.Typer:
    """The root app with every verb registered."""
    from tracemark.cli import _commands

    _commands.register_all(app)
    return app


def main() -> None:
    """Console-script entry point."""
    from rich.markup import escape

    from tracemark.cli._output import error_console
    from tracemark.errors import TracemarkError

    try:
        build_app()(standalone_mode=True)
    except TracemarkError as exc:
        error_console.print(f"[bold red]error:[/] {type(exc).__name__}: {escape(str(exc))}", highlight=False)
        sys.exit(2)
