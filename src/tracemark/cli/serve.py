"""``tracemark serve`` and the ``clients`` and ``audit`` groups (protected serving)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer

from tracemark.cli._output import emit, error_console
from tracemark.cli.package import TRUST_ANY_HELP, VENDOR_PUB_HELP, signer_warnings
from tracemark.extraction.settings import DEFAULT_CAP, DEFAULT_RATE
from tracemark.serve.errors import ServeConfigError

CLIENTS_DB_OPT = typer.Option(Path("clients.sqlite"), "--clients-db", envvar="TRACEMARK_CLIENTS_DB", help="Client store (SQLite).")
AUDIT_DB_OPT = typer.Option(Path("audit.sqlite"), "--audit-db", envvar="TRACEMARK_AUDIT_DB", help="Audit log (SQLite).")
JSON_OPT = typer.Option(False, "--json", help="Print machine-readable JSON.")
AUDIT_EXPORTED = "serve-audit-exported"
"""Ledger event recording an exported audit log (attached as ``transcript_sha256``)."""

clients_app = typer.Typer(help="API clients of `tracemark serve`: add, list, revoke.", no_args_is_help=True)
audit_app = typer.Typer(help="The serving audit log: export (for evidence), purge.", no_args_is_help=True)


@dataclass(frozen=True)
class ClientList:
    """The clients of a store."""

    clients: list

    def to_dict(self) -> dict:
        return {"clients": [c.to_dict() for c in self.clients]}

    def __str__(self) -> str:
        return "\n".join(str(c) for c in self.clients) if self.clients else "no clients; add one with `tracemark clients add NAME`"


@dataclass(frozen=True)
class RecordedExport:
    """An audit export and the ledger entry that records it."""

    export: object
    ledger_seq: int | None

    def to_dict(self) -> dict:
        return {**self.export.to_dict(), "ledger_seq": self.ledger_seq}  # type: ignore[attr-defined]

    def __str__(self) -> str:
        note = f"\n  recorded in the ledger as entry {self.ledger_seq} ({AUDIT_EXPORTED})" if self.ledger_seq is not None else ""
        return f"{self.export}{note}"


def _policy(output: Optional[str], top_k: Optional[int], decimals: Optional[int]):
    from tracemark.package.licence import OutputPolicy

    if output is None:
        if top_k is not None or decimals is not None:
            raise typer.BadParameter("--top-k and --decimals need --output", param_hint="--output")
        return None
    return OutputPolicy(output, top_k, decimals)


def _floats(text: str, what: str, count: int | None = None) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is not comma-separated numbers", param_hint=what) from exc
    if count is not None and len(values) != count:
        raise typer.BadParameter(f"give {count} comma-separated numbers", param_hint=what)
    return values


def _when(text: Optional[str], what: str) -> Optional[datetime]:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is not an ISO 8601 date-time", param_hint=what) from exc
    if value.tzinfo is None:
        raise typer.BadParameter("give a time zone (e.g. suffix Z for UTC)", param_hint=what)
    return value


def serve(
    model: Path = typer.Argument(..., help="Package (.tmpkg) or model file (.safetensors by tracemark, .onnx, .pt2)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, help="TCP port."),
    workers: int = typer.Option(1, help="uvicorn worker processes (rate limits are then shared through SQLite)."),
    clients_db: Path = CLIENTS_DB_OPT,
    audit_db: Path = AUDIT_DB_OPT,
    max_batch: int = typer.Option(64, help="Most inputs per request."),
    max_body_kib: int = typer.Option(4096, help="Largest request body in KiB."),
    value_range: str = typer.Option("0,1", help="Allowed input values MIN,MAX, or 'none'."),
    input_shape: Optional[str] = typer.Option(None, help="Input shape C,H,W when the model file does not say."),
    output: Optional[str] = typer.Option(None, help="Default output for clients without their own: label, top_k, probabilities "
                                                    "(default: the package licence's, or label)."),
    top_k: Optional[int] = typer.Option(None, help="k for --output top_k."),
    decimals: Optional[int] = typer.Option(None, help="Round returned scores to this many decimals."),
    rate: float = typer.Option(50.0, help="Default queries (inputs) per second per client."),
    burst: float = typer.Option(200.0, help="Default burst (queries) per client."),
    retention_days: float = typer.Option(90.0, help="Keep audit rows this many days (0: forever)."),
    audit_sync: str = typer.Option("NORMAL", help="Audit durability: NORMAL (survives a crash) or FULL (also power loss)."),
    threads: Optional[int] = typer.Option(None, help="torch threads per worker."),
    device: str = typer.Option("auto", help="Where the model runs: auto (CUDA when present, else CPU), cpu, cuda or cuda:N; "
                                            "ONNX on CUDA needs onnxruntime's CUDA provider (onnxruntime-gpu)."),
    predict_threads: Optional[int] = typer.Option(None, help="Requests each worker answers at once (default: its CPUs ÷ "
                                                             "torch threads; more wait their turn)."),
    passphrase_env: Optional[str] = typer.Option(None, "--passphrase-env", help="Package passphrase from this environment variable."),
    keys: list[Path] = typer.Option([], "--key", help="Vendor/recipient private key file that opens the package (repeatable)."),
    tpm: bool = typer.Option(False, "--tpm", help="Unseal the package with this device's TPM."),
    tcti: str = typer.Option("device:/dev/tpmrm0", "--tcti", help="TSS TCTI of the TPM, e.g. swtpm:host=127.0.0.1,port=2321."),
    machine: bool = typer.Option(False, "--machine", help="Open the package with this machine's derived secret (weak)."),
    vendor_pub: Optional[Path] = typer.Option(None, "--vendor-pub", help=VENDOR_PUB_HELP),
    trust_any_signer: bool = typer.Option(False, "--trust-any-signer", help=TRUST_ANY_HELP),
    log_level: str = typer.Option("warning", help="uvicorn log level."),
    marking: bool = typer.Option(False, "--marking", help="Mark answers per client (a keyed wrong label on a few inputs; "
                                                          "docs/guide/extraction.md)."),
    marking_secret: Optional[Path] = typer.Option(None, "--marking-secret", help="Marking master secret file "
                                                  "(`tracemark responses secret`; default $TRACEMARK_MARKING_SECRET)."),
    marking_rate: float = typer.Option(DEFAULT_RATE, help="Default fraction of each client's inputs to mark (with a marking profile: the average over in-distribution inputs)."),
    marking_cap: float = typer.Option(DEFAULT_CAP, help="Budget: a client's marked answers stay within this fraction of the inputs "
                                                        "answered to it (only typical inputs are held back; unusual ones are always marked)."),
    responses_db: Path = typer.Option(Path("responses.sqlite"), "--responses-db", envvar="TRACEMARK_RESPONSES_DB",
                                      help="Store of marked responses (the evidence; SQLite)."),
    monitor: bool = typer.Option(False, "--monitor", help="Watch each client's queries for stealing (PRADA, volume, class coverage)."),
    monitor_prada: float = typer.Option(0.90, help="Alert when the Shapiro-Wilk W of a client's query distances is below this (0: off)."),
    monitor_volume: int = typer.Option(10_000, help="Alert when a client asks more than this many queries a day (0: off)."),
    monitor_coverage: float = typer.Option(0.5, help="Alert when a client's answered classes are this far (total variation) "
                                                     "from uniform after 500 queries (0: off)."),
    throttle_rate: Optional[float] = typer.Option(None, help="Hold a flagged client to this many queries per second."),
    alerts_db: Optional[Path] = typer.Option(None, "--alerts-db", help="Where alerts go (default: the audit log's file)."),
    header_timeout: float = typer.Option(10.0, help="Seconds a request's head may take to arrive; slower connections are closed."),
    body_timeout: float = typer.Option(30.0, help="Seconds a request's body may take after its head; slower ones get 408 and are closed."),
    max_connections: int = typer.Option(256, help="Open connections per worker; requests beyond them get 503."),
    max_image_pixels: int = typer.Option(4096 * 4096, help="Largest uploaded image (width × height, read from its header); "
                                                           "larger ones get 413 without being decoded."),
    admin_token_env: Optional[str] = typer.Option(None, "--admin-token-env", help="Environment variable holding the admin token "
                                                  "of GET /metrics (default $TRACEMARK_ADMIN_TOKEN; without a token /metrics shows "
                                                  "aggregate counters only)."),
) -> None:
    """Serve a package or model behind API keys, rate limits, output policies and an audit log."""
    import uvicorn

    from tracemark.extraction.settings import MonitorSettings
    from tracemark.serve.app import create_app
    from tracemark.serve.config import ENV_CONFIG, ServeConfig, UnlockSpec
    from tracemark.serve.connections import uvicorn_options

    config = ServeConfig(
        model=str(model), clients_db=str(clients_db), audit_db=str(audit_db), host=host, port=port, workers=workers,
        max_batch=max_batch, max_body_bytes=max_body_kib << 10,
        value_range=None if value_range.lower() == "none" else _floats(value_range, "--value-range", 2),  # type: ignore[arg-type]
        input_shape=tuple(int(v) for v in _floats(input_shape, "--input-shape")) if input_shape else None,
        default_policy=_policy(output, top_k, decimals), rate=rate, burst=burst,
        retention_days=retention_days or None, audit_sync=audit_sync, torch_threads=threads, predict_threads=predict_threads,
        unlock=UnlockSpec(passphrase_env, tuple(str(k) for k in keys), tcti if tpm else None, machine,
                          str(vendor_pub) if vendor_pub else None, trust_any_signer),
        marking=marking, marking_secret=str(marking_secret) if marking_secret else None, marking_rate=marking_rate, marking_cap=marking_cap,
        responses_db=str(responses_db), alerts_db=str(alerts_db) if alerts_db else None,
        monitor=MonitorSettings(prada_delta=monitor_prada or None, volume=monitor_volume or None,
                                coverage_tv=monitor_coverage or None, throttle_rate=throttle_rate) if monitor else None,
        header_timeout=header_timeout, body_timeout=body_timeout, max_connections=max_connections,
        max_image_pixels=max_image_pixels, max_request_pixels=max(max_image_pixels, ServeConfig.max_request_pixels),
        admin_token_env=admin_token_env, device=device,
    )
    config.admin_token()  # fail here, once, on an unset or short admin token
    if marking:
        from tracemark.extraction.marking import MarkingSecret

        MarkingSecret.resolve(config.marking_secret)  # fail here, once, rather than in every worker
    with signer_warnings():
        served = config.load_model()  # fail here, once, rather than in every worker
    _announce(config, served.model_id, served.device)
    if workers == 1:
        uvicorn.run(create_app(served, config), host=host, port=port, log_level=log_level, **uvicorn_options(config))
        return
    del served
    os.environ[ENV_CONFIG] = config.to_json()
    uvicorn.run("tracemark.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, **uvicorn_options(config))


def _announce(config, model_id: str, device: str) -> None:
    from tracemark.serve.clients import ClientStore

    error_console.print(f"serving {model_id} on http://{config.host}:{config.port} ({config.workers} worker(s), {device}); "
                        f"clients {config.clients_db}, audit {config.audit_db}", highlight=False)
    try:
        loopback = ipaddress.ip_address(config.host).is_loopback
    except ValueError:
        loopback = config.host == "localhost"
    if config.marking:
        from tracemark.extraction.store import ResponseStore

        profile = ResponseStore(config.responses_db).profile()
        split = (f"; profile {profile.sha256[:16]}: typical inputs {profile.typical_rate(config.marking_rate):.3g}, unusual "
                 f"{profile.unusual_rate(config.marking_rate):.3g}" if profile else
                 "; no marking profile (uniform rate; `tracemark responses calibrate` marks unusual inputs more often)")
        error_console.print(f"response marking on: default rate {config.marking_rate:g}, budget {config.marking_cap:g} of each "
                            f"client's answers{split}; evidence in {config.responses_db}",
                            highlight=False)
    if config.monitor is not None:
        error_console.print(f"stealing monitor on: alerts in {config.alerts_db or config.audit_db}", highlight=False)
    if not loopback:
        error_console.print(f"[bold yellow]warning:[/] listening on {config.host}, not loopback; put TLS in front of it")
    if not any(c.active for c in ClientStore(config.clients_db).list()):
        error_console.print("[bold yellow]note:[/] no active clients; every query is refused until `tracemark clients add NAME`")


@clients_app.command("add")
def clients_add(
    name: str = typer.Argument(..., help="Client name (letters, digits, . _ @ -)."),
    output: Optional[str] = typer.Option(None, help="This client's output: label, top_k or probabilities (default: server's)."),
    top_k: Optional[int] = typer.Option(None, help="k for --output top_k."),
    decimals: Optional[int] = typer.Option(None, help="Round this client's scores to this many decimals."),
    rate: Optional[float] = typer.Option(None, help="This client's queries per second (with --burst)."),
    burst: Optional[float] = typer.Option(None, help="This client's burst in queries (with --rate)."),
    clients_db: Path = CLIENTS_DB_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Add a client and print its API key (shown once; only its hash is stored)."""
    from tracemark.serve.clients import ClientStore

    emit(ClientStore(clients_db).add(name, _policy(output, top_k, decimals), rate, burst), as_json)


@clients_app.command("list")
def clients_list(clients_db: Path = CLIENTS_DB_OPT, as_json: bool = JSON_OPT) -> None:
    """List clients (never their keys)."""
    from tracemark.serve.clients import ClientStore

    emit(ClientList(ClientStore(clients_db).list()), as_json)


@clients_app.command("revoke")
def clients_revoke(name: str = typer.Argument(..., help="Client name or id."), clients_db: Path = CLIENTS_DB_OPT,
                   as_json: bool = JSON_OPT) -> None:
    """Revoke a client's key; running servers refuse it (403) from the next request."""
    from tracemark.serve.clients import ClientStore

    emit(ClientStore(clients_db).revoke(name), as_json)


@audit_app.command("export")
def audit_export(
    out: Path = typer.Option(..., "--out", help="JSON file to write."),
    audit_db: Path = AUDIT_DB_OPT,
    since: Optional[str] = typer.Option(None, help="First time included, ISO 8601 UTC."),
    until: Optional[str] = typer.Option(None, help="First time excluded, ISO 8601 UTC."),
    client: Optional[str] = typer.Option(None, help="Only this client (name or id; needs --clients-db)."),
    clients_db: Path = CLIENTS_DB_OPT,
    record: bool = typer.Option(False, "--record", help="Attach the export to the evidence ledger ($TRACEMARK_LEDGER)."),
    ledger: Optional[Path] = typer.Option(None, "--ledger", help="Ledger directory (default $TRACEMARK_LEDGER)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Export audit rows as JSON, optionally recorded in the evidence ledger so bundles carry it."""
    from tracemark.serve.audit import AuditLog
    from tracemark.serve.clients import ClientStore

    if not audit_db.is_file():
        raise ServeConfigError(f"no audit log at {audit_db}; give --audit-db or $TRACEMARK_AUDIT_DB")
    client_id = ClientStore(clients_db).get(client).id if client else None
    result = AuditLog(audit_db).export(out, _when(since, "--since"), _when(until, "--until"), client_id)
    seq = None
    if record:
        from tracemark.ledger import configured_ledger
        from tracemark.errors import LedgerError

        target = configured_ledger(ledger)
        if target is None:
            raise LedgerError("--record needs a ledger: --ledger DIR or $TRACEMARK_LEDGER")
        digest = target.attach(out.read_bytes())
        entry = target.append(AUDIT_EXPORTED, {"transcript_sha256": digest, "rows": result.rows, "first": result.first,
                                               "last": result.last, "client_id": client_id})
        seq = entry.seq
    emit(RecordedExport(result, seq), as_json)


@audit_app.command("purge")
def audit_purge(
    retention_days: float = typer.Option(..., help="Delete rows older than this many days."),
    audit_db: Path = AUDIT_DB_OPT,
) -> None:
    """Delete audit rows older than the retention period."""
    from tracemark.serve.audit import AuditLog

    removed = AuditLog(audit_db, retention_days).purge()
    error_console.print(f"deleted {removed} audit rows older than {retention_days:g} days from {audit_db}", highlight=False)


def register(root: typer.Typer) -> None:
    """Add ``serve`` and the ``clients`` and ``audit`` groups."""
    root.command("serve")(serve)
    root.add_typer(clients_app, name="clients")
    root.add_typer(audit_app, name="audit")
