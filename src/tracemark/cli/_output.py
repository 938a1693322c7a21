"""Shared console objects and JSON output for the CLI."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

console = Console()
error_console = Console(stderr=True, soft_wrap=True)  # an error stays one line, whatever the width


def emit(result: Any, as_json: bool) -> None:
    """Print a result value: its ``to_dict()`` as JSON with ``--json``, else its ``__str__``."""
    if as_json:
        payload = result.to_dict() if hasattr(result, "to_dict") else result
        print(json.dumps(payload, indent=2, sort_keys=True, default=str))
    else:
        console.print(str(result), highlight=False, soft_wrap=True)
