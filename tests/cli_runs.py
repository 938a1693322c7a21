"""Running the whole CLI from a test: ``run`` (in process, must succeed) and ``cli_error`` (the console entry
point, must fail with one ``error:`` line)."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from tracemark.cli import build_app, main

runner = CliRunner()
app = build_app()


def run(*args: str):
    """``tracemark ARGS`` in process; asserts exit 0 and returns the result."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def cli_error(capsys, monkeypatch, *args: str) -> str:
    """Run the console entry point; assert exit 2 with one ``error:`` line, and return it."""
    monkeypatch.setattr(sys, "argv", ["tracemark", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    assert exc.value.code == 2 and len(lines) == 1 and lines[0].startswith("error:"), lines
    return lines[0]
