"""``tracemark report`` (write the ownership report) and ``tracemark report verify`` (check a signed one)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tracemark.cli._output import console, emit
from tracemark.cli.ledger import Json, OwnerPub, Passphrase, PassphraseFile, TrustAnyAuthority, TsaCa, load_owner, owner_public_key, trusted_roots

report_app = typer.Typer(help="The ownership report: HTML and a signed, time-stamped PDF a lawyer can read.")


@report_app.callback(invoke_without_command=True)
def report(
    ctx: typer.Context,
    verdict: Annotated[Optional[Path], typer.Option("--verdict", help="Verdict JSON (`tracemark verify --json`).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for report.html and report.pdf.")] = None,
    bundle: Annotated[Optional[Path], typer.Option("--bundle", help="Evidence bundle (`tracemark evidence export`): the timeline, "
                                                   "the hashes and, if it reveals the key, the trigger images.")] = None,
    trace: Annotated[Optional[Path], typer.Option("--trace", help="Trace JSON (`tracemark trace --json`).")] = None,
    robustness: Annotated[Optional[Path], typer.Option("--robustness", help="Robustness result.json (`tracemark robustness`).")] = None,
    key: Annotated[Optional[Path], typer.Option("--key", help="Watermark key file, for the trigger images when the bundle does not reveal it.")] = None,
    owner_key: Annotated[Optional[Path], typer.Option("--owner-key", envvar="TRACEMARK_OWNER_KEY", help="Owner private key file that signs the PDF (or $TRACEMARK_OWNER_KEY).")] = None,
    passphrase: Passphrase = None,
    passphrase_file: PassphraseFile = None,
    cert: Annotated[Optional[Path], typer.Option("--cert", help="Owner certificate (PEM; default <owner key>.cert.pem, made self-signed from the owner key if absent).")] = None,
    owner_name: Annotated[str, typer.Option("--owner-name", help="Who claims ownership, in words (also put in a new certificate).")] = "",
    tsa_url: Annotated[Optional[str], typer.Option("--tsa-url", envvar="TRACEMARK_TSA_URL", help="RFC 3161 authority that time-stamps the signature (default: the one the bundle's ledger uses).")] = None,
    tsa_ca: TsaCa = None,
    trust_any_authority: TrustAnyAuthority = False,
    as_json: Json = False,
) -> None:
    """Write DIR/report.html and a signed, time-stamped DIR/report.pdf from a verdict (and a bundle, trace, robustness result)."""
    if ctx.invoked_subcommand is not None:
        return
    if verdict is None or out is None or owner_key is None:
        missing = [name for name, value in (("--verdict", verdict), ("--out", out), ("--owner-key", owner_key)) if value is None]
        raise typer.BadParameter(f"give {', '.join(missing)} (or run `tracemark report verify REPORT.pdf`)")
    from tracemark.cli._options import load_key
    from tracemark.report.ownership import build_report, read_json, write_report
    from tracemark.report.signing import certificate_path, ensure_owner_certificate

    owner = load_owner(owner_key, passphrase, passphrase_file)
    wm_key = load_key(key) if key is not None else None
    sources = {"verdict": str(verdict), **({"trace": str(trace)} if trace else {}), **({"bundle": str(bundle)} if bundle else {})}
    value = build_report(read_json(verdict, "verdict"), bundle=bundle, trace=read_json(trace, "trace result") if trace else None,
                         robustness=robustness, key=wm_key, owner_name=owner_name, trusted_roots=trusted_roots(tsa_ca),
                         trust_any_authority=trust_any_authority, sources=sources)
    cert_file = cert or certificate_path(owner_key)
    certificate, made = ensure_owner_certificate(owner, cert_file, owner_name)
    if made and not as_json:
        console.print(f"made a self-signed owner certificate {cert_file} (give it to whoever checks the report)")
    emit(write_report(value, out, owner, certificate, tsa_url), as_json)


@report_app.command("verify")
def verify(
    pdf: Annotated[Path, typer.Argument(help="The signed report.pdf.")],
    bundle: Annotated[Optional[Path], typer.Option("--bundle", help="Evidence bundle the report's hashes must match.")] = None,
    cert: Annotated[Optional[Path], typer.Option("--cert", help="Pin the owner: the owner certificate (PEM).")] = None,
    owner_pub: OwnerPub = None,
    tsa_ca: TsaCa = None,
    trust_any_authority: TrustAnyAuthority = False,
    as_json: Json = False,
) -> None:
    """Check the report's signature (against the pinned owner, never the certificate it carries), its time-stamp, and the bundle's hashes."""
    from tracemark.report.ownership import verify_report
    from tracemark.report.signing import load_certificate

    emit(verify_report(pdf, bundle=bundle, cert=load_certificate(cert) if cert is not None else None,
                       owner_key=owner_public_key(owner_pub), trusted_roots=trusted_roots(tsa_ca),
                       trust_any_authority=trust_any_authority), as_json)


def register(root: typer.Typer) -> None:
    """Add ``report`` and ``report verify``."""
    root.add_typer(report_app, name="report")
