"""``tracemark ledger init|show|verify|timestamp``: the owner's signed, time-stamped event ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tracemark.cli._output import console, emit

ledger_app = typer.Typer(help="The evidence ledger: signed, hash-chained, RFC 3161 time-stamped events.", no_args_is_help=True)

LedgerDir = Annotated[Path, typer.Argument(envvar="TRACEMARK_LEDGER", help="Ledger directory (or $TRACEMARK_LEDGER).")]
OwnerKey = Annotated[Path, typer.Option("--owner-key", envvar="TRACEMARK_OWNER_KEY", help="Owner private key file (or $TRACEMARK_OWNER_KEY).")]
Passphrase = Annotated[
    Optional[str],
    typer.Option("--passphrase-env", metavar="VAR",
                 help="Read the owner key passphrase from this environment variable (default $TRACEMARK_OWNER_PASSPHRASE; "
                      "else --passphrase-file, else a prompt)."),
]
PassphraseFile = Annotated[Optional[Path], typer.Option("--passphrase-file", help="Read the owner key passphrase from this file.")]
TsaCa = Annotated[Optional[Path], typer.Option("--tsa-ca", help="Pin the time-stamp authority: its root CA certificate (PEM; or $TRACEMARK_TSA_CA).")]
OwnerPub = Annotated[Optional[Path], typer.Option("--owner-pub", help="Pin the owner: the expected public key PEM.")]
TrustAnyAuthority = Annotated[bool, typer.Option("--trust-any-authority", help="Without --tsa-ca: accept the root CA each time-stamp token carries, with a warning (otherwise tokens from an unpinned authority are refused).")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def owner_passphrase(passphrase_env: str | None, passphrase_file: Path | None, *, new: bool = False) -> str:
    """The owner key passphrase from ``--passphrase-file``, ``--passphrase-env``, $TRACEMARK_OWNER_PASSPHRASE or a prompt."""
    from tracemark.cli._options import read_secret
    from tracemark.ledger.events import ENV_OWNER_PASSPHRASE

    return read_secret("new owner key passphrase" if new else "owner key passphrase", ENV_OWNER_PASSPHRASE,
                       env_var=passphrase_env, file=passphrase_file, confirm=new,
                       other_sources="or give --passphrase-env VAR or --passphrase-file PATH")


def load_owner(path: Path, passphrase_env: str | None = None, passphrase_file: Path | None = None):  # noqa: ANN201
    """The owner key (an ``OwnerIdentity``) at ``path``, its passphrase read by :func:`owner_passphrase`."""
    return open_owner(path, owner_passphrase(passphrase_env, passphrase_file))


def open_owner(path: Path, passphrase: str):  # noqa: ANN201
    """``OwnerIdentity.load``, printing a legacy PEM key's warning as one line."""
    from tracemark.cli._options import warnings_as_lines
    from tracemark.ledger import OwnerIdentity

    with warnings_as_lines():
        return OwnerIdentity.load(path, passphrase)


def trusted_roots(path: Path | None) -> list | None:
    """Certificates from ``--tsa-ca`` or ``$TRACEMARK_TSA_CA``, or ``None`` (not pinned)."""
    from tracemark.trust.authorities import pinned_authority_roots

    return pinned_authority_roots(path)


def owner_public_key(path: Path | None):  # noqa: ANN201
    """The key from ``--owner-pub``, or ``None``."""
    from tracemark.ledger import load_public_key

    return None if path is None else load_public_key(path)


@ledger_app.command("init")
def init(directory: LedgerDir, owner_key: OwnerKey, passphrase: Passphrase = None, passphrase_file: PassphraseFile = None,
         as_json: Json = False) -> None:
    """Create a ledger; makes the owner key pair first if OWNER_KEY does not exist."""
    from tracemark.ledger import Ledger, OwnerIdentity

    if owner_key.exists():
        owner = load_owner(owner_key, passphrase, passphrase_file)
    else:
        secret = owner_passphrase(passphrase, passphrase_file, new=True)
        owner = OwnerIdentity.generate()
        owner.save(owner_key, secret)
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
    trust_any_authority: TrustAnyAuthority = False,
    strict: Annotated[bool, typer.Option(help="Fail on warnings too (torn tail, missing attachments, stray tokens, unpinned authority).")] = False,
    witness: Annotated[Optional[list[Path]], typer.Option("--witness", help="An exported bundle, saved head.json or token record the ledger must still contain (repeatable; detects rollback).")] = None,
    as_json: Json = False,
) -> None:
    """Check the chain, signatures, signed head, time-stamp tokens, attachments, and rollback against witnesses."""
    from tracemark.ledger import verify_ledger

    emit(verify_ledger(directory, owner_public_key(owner_pub), trusted_roots(tsa_ca), strict=strict, witnesses=witness or [],
                       trust_any_authority=trust_any_authority), as_json)


@ledger_app.command("timestamp")
def timestamp(
    directory: LedgerDir,
    owner_key: OwnerKey,
    tsa_url: Annotated[str, typer.Option(envvar="TRACEMARK_TSA_URL", help="RFC 3161 authority URL (or $TRACEMARK_TSA_URL).")],
    tsa_chain: Annotated[Path, typer.Option(envvar="TRACEMARK_TSA_CHAIN", help="The authority's certificate chain, PEM (or $TRACEMARK_TSA_CHAIN).")],
    passphrase: Passphrase = None,
    passphrase_file: PassphraseFile = None,
    tsa_ca: TsaCa = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the authority.")] = 30.0,
    as_json: Json = False,
) -> None:
    """Time-stamp all pending entries with one request (Merkle root) and record the token."""
    from tracemark.ledger import Ledger, obtain_timestamp

    ledger = Ledger.open(directory, load_owner(owner_key, passphrase, passphrase_file))
    result = obtain_timestamp(ledger, tsa_url, tsa_chain.read_bytes(), trusted_roots(tsa_ca), timeout=timeout)
    if result is None:
        emit({"timestamped": None, "message": "nothing pending"} if as_json else "nothing pending: every entry is time-stamped", as_json)
        return
    entry, info = result
    emit({"entry": entry.to_dict(), "token": info.to_dict()} if as_json else f"entries {entry.payload['first_seq']}–{entry.payload['last_seq']}: {info}", as_json)


@ledger_app.command("rekey")
def rekey(
    owner_key: OwnerKey,
    passphrase: Passphrase = None,
    passphrase_file: PassphraseFile = None,
    new_passphrase_env: Annotated[Optional[str], typer.Option("--new-passphrase-env", metavar="VAR",
                                                              help="Read the new passphrase from this environment variable (default: keep the old one).")] = None,
    new_passphrase_file: Annotated[Optional[Path], typer.Option("--new-passphrase-file", help="Read the new passphrase from this file.")] = None,
) -> None:
    """Re-encrypt the owner key in the current format (scrypt + AES-256-GCM); the key pair stays the same."""
    from tracemark.cli._options import read_secret
    from tracemark.ledger.events import ENV_OWNER_PASSPHRASE

    secret = owner_passphrase(passphrase, passphrase_file)
    owner = open_owner(owner_key, secret)
    if new_passphrase_env is not None or new_passphrase_file is not None:
        secret = read_secret("new owner key passphrase", ENV_OWNER_PASSPHRASE, env_var=new_passphrase_env, file=new_passphrase_file)
    owner.save(owner_key, secret)
    console.print(f"re-encrypted owner key {owner_key} with scrypt (fingerprint {owner.fingerprint()[:16]}…)", highlight=False)


def register(root: typer.Typer) -> None:
    """Add ``ledger`` to the root app."""
    root.add_typer(ledger_app, name="ledger")
