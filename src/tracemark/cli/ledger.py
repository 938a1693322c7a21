"""``tracemark ledger init|show|verify|timestamp``: the owner's signed, time-stamped event ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tracemark.cli._output import console, emit

ledger_app = typer.Typer(help="The evidence ledger: signed, hash-chained, RFC 3161 time-stamped events.", no_args_is_help=True)

LedgerDir = Annotated[Path, typer.Argument(envvar="TRACEMARK_LEDGER", help="Ledger directory (or $TRACEMARK_LEDGER).")]
OwnerKey = Annotated[Path, typer.Option("--owner-key", envvar="TRACEMARK_OWNER_KEY", help="Owner private key PEM (or $TRACEMARK_OWNER_KEY).")]
Passphrase = Annotated[
    Optional[str],
    typer.Option("--passphrase", envvar="TRACEMARK_OWNER_PASSPHRASE", help="Owner key passphrase (or $TRACEMARK_OWNER_PASSPHRASE; prompted if absent)."),
]
TsaCa = Annotated[Optional[Path], typer.Option("--tsa-ca", help="Pin the time-stamp authority: its root CA certificate (PEM).")]
OwnerPub = Annotated[Optional[Path], typer.Option("--owner-pub", help="Pin the owner: the expected public key PEM.")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def load_owner(path: Path, passphrase: str | None):  # noqa: ANN201 (OwnerIdentity, imported lazily)
    """The owner key at ``path``, prompting for the passphrase if it was not given."""
    from tracemark.ledger import OwnerIdentity

    if passphrase is None:
        passphrase = typer.prompt("Owner key passphrase", hide_input=True)
    return OwnerIdentity.load(path, passphrase)


def trusted_roots(path: Path | None) -> list | None:
    """Certificates from ``--tsa-ca``, or ``None``."""
    from tracemark.ledger.timestamp import load_certificates

    return None if path is None else load_certificates(path.read_bytes(), str(path))


def owner_public_key(path: Path | None):  # noqa: ANN201
    """The key from ``--owner-pub``, or ``None``."""
    from tracemark.ledger import load_public_key

    return None if path is None else load_public_key(path)


@ledger_app.command("init")
def init(directory: LedgerDir, owner_key: OwnerKey, passphrase: Passphrase = None, as_json: Json = False) -> None:
    """Create a ledger; makes the owner key pair first if OWNER_KEY does not exist."""
    from tracemark.ledger import Ledger, OwnerIdentity

    if owner_key.exists():
        owner = load_owner(owner_key, passphrase)
    else:
        if passphrase is None:
            passphrase = typer.prompt("New owner key passphrase", hide_input=True, confirmation_prompt=True)
        owner = OwnerIdentity.generate()
        owner.save(owner_key, passphrase)
        console.print(f"created owner key {owner_key} (public key {owner_key}.pub.pem)")
    ledger = Ledger.init(directory, owner)
    emit(ledger.entries()[0], as_json)


@ledger_app.command("show")
def show(directory: LedgerDir, last: Annotated[int, typer.Option(help="Show only the last N entries (0 = all).")] = 0, as_json: Json = False) -> None:
    """List the entries (chain-checked)."""
    from tracemark.ledger import Ledger

    entries = Ledger.open(directory).entries()
    entries = entries[-last:] if last else entries
    if as_json:
        emit([e.to_dict() for e in entries], True)
    else:
        for entry in entries:
            console.print(str(entry), highlight=False, soft_wrap=True)


@ledger_app.command("verify")
def verify(
    directory: LedgerDir,
    owner_pub: OwnerPub = None,
    tsa_ca: TsaCa = None,
    strict: Annotated[bool, typer.Option(help="Fail on warnings too (torn tail, missing attachments, stray tokens).")] = False,
    as_json: Json = False,
) -> None:
    """Check the chain, signatures, signed head, time-stamp tokens and attachments."""
    from tracemark.ledger import verify_ledger

    emit(verify_ledger(directory, owner_public_key(owner_pub), trusted_roots(tsa_ca), strict=strict), as_json)


@ledger_app.command("timestamp")
def timestamp(
    directory: LedgerDir,
    owner_key: OwnerKey,
    tsa_url: Annotated[str, typer.Option(envvar="TRACEMARK_TSA_URL", help="RFC 3161 authority URL (or $TRACEMARK_TSA_URL).")],
    tsa_chain: Annotated[Path, typer.Option(envvar="TRACEMARK_TSA_CHAIN", help="The authority's certificate chain, PEM (or $TRACEMARK_TSA_CHAIN).")],
    passphrase: Passphrase = None,
    tsa_ca: TsaCa = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the authority.")] = 30.0,
    as_json: Json = False,
) -> None:
    """Time-stamp all pending entries with one request (Merkle root) and record the token."""
    from tracemark.ledger import Ledger, obtain_timestamp

    ledger = Ledger.open(directory, load_owner(owner_key, passphrase))
    result = obtain_timestamp(ledger, tsa_url, tsa_chain.read_bytes(), trusted_roots(tsa_ca), timeout=timeout)
    if result is None:
        emit({"timestamped": None, "message": "nothing pending"} if as_json else "nothing pending: every entry is time-stamped", as_json)
        return
    entry, info = result
    emit({"entry": entry.to_dict(), "token": info.to_dict()} if as_json else f"entries {entry.payload['first_seq']}–{entry.payload['last_seq']}: {info}", as_json)


def register(root: typer.Typer) -> None:
    """Add ``ledger`` to the root app."""
    root.add_typer(ledger_app, name="ledger")
