"""``tracemark evidence export|verify``: one archive a third party checks offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tracemark.cli._output import emit, error_console
from tracemark.cli.ledger import (Json, LedgerDir, OwnerKey, OwnerPub, Passphrase, PassphraseFile, TrustAnyAuthority, TsaCa, load_owner,
                                  owner_public_key, trusted_roots)
from tracemark.errors import TracemarkError

evidence_app = typer.Typer(help="Evidence bundles: export the proof of ownership, verify it offline.", no_args_is_help=True)


@evidence_app.command("export")
def export(
    directory: LedgerDir,
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle file to write (.zip).")],
    owner_key: OwnerKey,
    passphrase: Passphrase = None,
    passphrase_file: PassphraseFile = None,
    key: Annotated[Optional[list[Path]], typer.Option("--key", help="Watermark key file to reveal (repeatable; encrypted ones "
                                                                      "open with $TRACEMARK_KEY_PASSPHRASE or a prompt).")] = None,
    lineage: Annotated[Optional[list[Path]], typer.Option("--lineage", help="Lineage file to reveal (repeatable; "
                                                                              "'tracemark lineage new --ledger' committed it).")] = None,
    upto: Annotated[Optional[int], typer.Option(help="Export entries 0..UPTO only (default: all).")] = None,
    as_json: Json = False,
) -> None:
    """Write an evidence bundle: ledger, tokens, owner key, key and lineage reveals, verdicts, transcripts, summary."""
    from tracemark.cli._options import load_key
    from tracemark.ledger import export_bundle
    from tracemark.lineage import read_lineage

    lineages = [read_lineage(path) for path in lineage or []]  # a bad file: one line, before the owner key is opened
    owner = load_owner(owner_key, passphrase, passphrase_file)
    keys = [load_key(path) for path in key or []]
    emit(export_bundle(directory, out, owner, keys, upto, lineages=lineages), as_json)


@evidence_app.command("verify")
def verify(
    bundle: Annotated[Path, typer.Argument(help="Bundle .zip, or an extracted bundle directory.")],
    owner_pub: OwnerPub = None,
    tsa_ca: TsaCa = None,
    trust_any_authority: TrustAnyAuthority = False,
    as_json: Json = False,
) -> None:
    """Check a bundle offline and print what it proves; exit 1 when a check fails, 2 when the bundle is refused unread."""
    from tracemark.errors import ArchiveBoundsError, ArchiveFeatureError
    from tracemark.ledger import verify_bundle
    from tracemark.ledger.errors import MalformedPayloadError, UnpinnedAuthorityError

    try:
        report = verify_bundle(bundle, owner_public_key(owner_pub), trusted_roots(tsa_ca), trust_any_authority=trust_any_authority)
    except TracemarkError as exc:
        if as_json:
            emit({"ok": False, "error": type(exc).__name__, "message": str(exc)}, True)
        error_console.print(f"[bold red]FAILED:[/] {type(exc).__name__}: {exc}", highlight=False, soft_wrap=True)
        refused = isinstance(exc, (ArchiveBoundsError, ArchiveFeatureError, MalformedPayloadError, UnpinnedAuthorityError))
        raise typer.Exit(2 if refused else 1) from exc
    emit({"ok": True, **report.to_dict()} if as_json else report, as_json)


def register(root: typer.Typer) -> None:
    """Add ``evidence`` to the root app."""
    root.add_typer(evidence_app, name="evidence")
