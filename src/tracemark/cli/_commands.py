"""The list of CLI verb modules; each exposes ``register(root: typer.Typer)``."""

from __future__ import annotations

import importlib

import typer

VERB_MODULES: tuple[str, ...] = ("keys", "models", "verify", "demo", "package", "serve", "robustness", "ledger", "evidence", "responses", "fingerprint", "report", "lineage")

_registered = False


def register_all(root: typer.Typer) -> None:
    """Register every verb module's commands on ``root`` (once)."""
    global _registered
    if _registered:
        return
    for name in VERB_MODULES:
        importlib.import_module(f"tracemark.cli.{name}").register(root)
    _registered = True
