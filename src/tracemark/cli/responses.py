"""``tracemark responses``: response marking (secret, per-client rates, evidence) and clone attribution; monitor alerts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer

from tracemark.cli._options import (API_KEY_OPT, ARCH_OPT, CLASSES_OPT, INPUT_SHAPE_OPT, LEDGER_HELP, MODEL_OPT, TIMEOUT_OPT, URL_OPT,
                                   data_help, load_data, record_event, suspect_target)
from tracemark.cli._output import emit, error_console
from tracemark.extraction.settings import (DEFAULT_BOOST, DEFAULT_COMPONENTS, DEFAULT_RATE, DEFAULT_REGION_MARKS,
                                          DEFAULT_UNUSUAL_SHARE)

RESPONSES_DB_OPT = typer.Option(Path("responses.sqlite"), "--responses-db", envvar="TRACEMARK_RESPONSES_DB",
                                help="Store of marked responses (SQLite).")
CLIENTS_DB_OPT = typer.Option(Path("clients.sqlite"), "--clients-db", envvar="TRACEMARK_CLIENTS_DB", help="Client store (SQLite).")
JSON_OPT = typer.Option(False, "--json", help="Print machine-readable JSON.")
CLONE_CHECK = "responses-clone-check"
"""Ledger event recording a clone check and its outcome."""
RESPONSES_EXPORTED = "responses-exported"
"""Ledger event recording an export of marked responses (attached as ``transcript_sha256``)."""

responses_app = typer.Typer(help="Response marking of `tracemark serve`: secret, per-client rates, and naming the client "
                                 "a clone learned from; stealing-monitor alerts.", no_args_is_help=True)


@dataclass(frozen=True)
class SecretMade:
    path: Path
    fingerprint: str

    def to_dict(self) -> dict:
        return {"path": str(self.path), "fingerprint": self.fingerprint}

    def __str__(self) -> str:
        return (f"marking secret {self.fingerprint} -> {self.path} (mode 600; keep it secret and backed up: "
                "without it, new answers are marked differently)")


@dataclass(frozen=True)
class Listing:
    items: list

    def to_dict(self) -> dict:
        return {"items": [i.to_dict() for i in self.items]}

    def __str__(self) -> str:
        return "\n".join(str(i) for i in self.items) if self.items else "nothing recorded yet"


@dataclass(frozen=True)
class RateSet:
    client: str
    rate: Optional[float]

    def to_dict(self) -> dict:
        return {"client": self.client, "rate": self.rate}

    def __str__(self) -> str:
        return f"{self.client}: marking rate {self.rate:g}" if self.rate is not None else f"{self.client}: server default marking rate"


@responses_app.command("secret")
def secret(out: Path = typer.Option(..., "--out", help="File to write (created 0600)."),
           force: bool = typer.Option(False, "--force", help="Overwrite an existing secret (answers will be marked differently)."),
           as_json: bool = JSON_OPT) -> None:
    """Make a new response-marking master secret; per-client secrets are derived from it."""
    from tracemark.extraction.errors import MarkingSecretError
    from tracemark.extraction.marking import MarkingSecret

    if out.exists() and not force:
        raise MarkingSecretError(f"{out} exists; replacing it changes every client's marks (use --force if you mean it)")
    made = MarkingSecret.generate()
    made.save(out)
    emit(SecretMade(out, made.fingerprint), as_json)


@responses_app.command("rate")
def rate(client: str = typer.Argument(..., help="Client name or id."),
         value: str = typer.Argument(..., help="Fraction of the client's inputs to mark (e.g. 0.005), or 'default'."),
         clients_db: Path = CLIENTS_DB_OPT, responses_db: Path = RESPONSES_DB_OPT, as_json: bool = JSON_OPT) -> None:
    """Set one client's marking rate (running servers pick it up within seconds)."""
    from tracemark.extraction.store import ResponseStore
    from tracemark.serve.clients import ClientStore

    record = ClientStore(clients_db).get(client)
    if value == "default":
        fraction = None
    else:
        try:
            fraction = float(value)
        except ValueError as exc:
            raise typer.BadParameter(f"{value!r} is not a fraction or 'default'", param_hint="VALUE") from exc
    ResponseStore(responses_db).set_rate(record, fraction)
    emit(RateSet(record.name, fraction), as_json)


@dataclass(frozen=True)
class ProfileSet:
    store: Path
    summary: dict
    rate: float

    def to_dict(self) -> dict:
        return {"responses_db": str(self.store), "rate": self.rate, **self.summary}

    def __str__(self) -> str:
        s = self.summary
        return (f"marking profile {s['sha256'][:16]} -> {self.store}: {100 * s['unusual_share']:g}% of in-distribution inputs "
                f"count as unusual; at rate {self.rate:g} typical inputs are marked at {s['typical_rate']:.4g}, unusual ones "
                f"at {s['unusual_rate']:.4g} (restart servers to use it)")


@responses_app.command("calibrate")
def calibrate(data: str = typer.Option(..., "--data", help=data_help("In-distribution images (a named set or .npz: its training "
                                                                     "split; a folder: a seeded sample of 10,000)", folders=True)),
              unusual_share: float = typer.Option(DEFAULT_UNUSUAL_SHARE, help="Share of in-distribution inputs to call unusual."),
              boost: float = typer.Option(DEFAULT_BOOST, help="Mark unusual inputs this many times as often as typical ones (1: uniform)."),
              components: int = typer.Option(DEFAULT_COMPONENTS, help="Principal components of the input model."),
              region_marks: bool = typer.Option(DEFAULT_REGION_MARKS, "--region-marks/--per-input-marks",
                                                help="Mark unusual inputs by region (a clone learns them from labels) or one by one."),
              seed: int = typer.Option(0, help="Seed of the fit / threshold split (and of a folder's sample)."),
              rate: float = typer.Option(DEFAULT_RATE, help="Average rate to show the two rates for (the server's --marking-rate)."),
              responses_db: Path = RESPONSES_DB_OPT, as_json: bool = JSON_OPT) -> None:
    """Calibrate where marks go: unusual inputs (unlike DATA) are marked more often, typical ones less, same average."""
    from tracemark.extraction.profile import MarkingProfile
    from tracemark.extraction.store import ResponseStore

    profile = MarkingProfile.calibrate(calibration_images(data, seed), unusual_share=unusual_share, boost=boost,
                                       components=components, seed=seed, region_marks=region_marks)
    ResponseStore(responses_db).set_profile(profile)
    emit(ProfileSet(responses_db, profile.summary(rate), rate), as_json)


def calibration_images(data: str, seed: int, limit: int = 10_000):
    """``--data`` as an N×C×H×W array: a named set's training split, or a seeded sample of ``limit`` items of a folder."""
    import numpy as np

    from tracemark.data import ImageData
    from tracemark.data.batches import sample_arrays

    dataset = load_data(data)
    if isinstance(dataset, ImageData):
        return dataset.x_train
    rows = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:limit])
    return sample_arrays(dataset, rows)[0]


@responses_app.command("list")
def list_clients(responses_db: Path = RESPONSES_DB_OPT, as_json: bool = JSON_OPT) -> None:
    """Clients with marked answers (the evidence), answered inputs, marks spared by the budget, or their own marking rate."""
    from tracemark.extraction.store import ResponseStore

    _require(responses_db)
    summaries = ResponseStore(responses_db).clients()
    emit(Listing([_Summary(s) for s in summaries]), as_json)


@dataclass(frozen=True)
class _Summary:
    summary: object

    def to_dict(self) -> dict:
        return self.summary.to_dict()  # type: ignore[attr-defined]

    def __str__(self) -> str:
        s = self.summary
        own = f", own rate {s.rate:g}" if s.rate is not None else ""  # type: ignore[attr-defined]
        return (f"{s.client_name} ({s.client_id}): {s.marked} marked answers, {s.answered} inputs answered (as counted so far), "  # type: ignore[attr-defined]
                f"{s.spared} drawn marks spared by the budget{own}")  # type: ignore[attr-defined]


def _require(path: Path) -> None:
    from tracemark.extraction.errors import ResponseStoreError

    if not path.is_file():
        raise ResponseStoreError(f"no response store at {path}; give --responses-db or $TRACEMARK_RESPONSES_DB")


@responses_app.command("check")
def check(
    model: Optional[Path] = MODEL_OPT,
    url: Optional[str] = URL_OPT,
    field: str = typer.Option("labels", help="With --url: dotted path of the labels in the JSON response."),
    probabilities_field: Optional[str] = typer.Option(None, help="With --url: dotted path of probability rows, if the API gives them."),
    api_key: Optional[str] = API_KEY_OPT,
    batch_size: int = typer.Option(32, help="With --url: inputs per request."),
    timeout: float = TIMEOUT_OPT,
    arch: Optional[str] = ARCH_OPT,
    input_shape: Optional[str] = INPUT_SHAPE_OPT,
    classes: Optional[int] = CLASSES_OPT,
    client: list[str] = typer.Option([], "--client", help="Only test this client (name or id; repeatable; needs --clients-db)."),
    evidence: Optional[Path] = typer.Option(None, "--evidence", help="Use an export (`tracemark responses export`) instead of the store."),
    alpha: float = typer.Option(1e-6, help="Name a client (or a coalition's pooled marks) only when its adjusted p-value is at most this."),
    member_alpha: Optional[float] = typer.Option(None, help="A client joins a coalition only if its own Bonferroni-adjusted p-value "
                                                            "is at most this (default: 1e-3, or alpha if larger)."),
    max_coalition: int = typer.Option(8, help="Largest coalition of clients searched for (the adjustment counts every set up to it)."),
    group: list[str] = typer.Option([], "--group", help="Also test these clients as one group, chosen without looking at the marks "
                                                        "(comma-separated names or ids; repeatable; needs --clients-db)."),
    groups_created_within: Optional[float] = typer.Option(None, "--groups-created-within", metavar="SECONDS",
                                                          help="Also test, as groups, keys created within SECONDS of each other "
                                                               "(from --clients-db)."),
    responses_db: Path = RESPONSES_DB_OPT,
    clients_db: Path = CLIENTS_DB_OPT,
    ledger: Optional[Path] = typer.Option(None, "--ledger", help=LEDGER_HELP),
    as_json: bool = JSON_OPT,
) -> None:
    """Ask a suspect every client's marked inputs and name the clients (or the coalition of clients) whose answers it learned from."""
    from tracemark.extraction.clones import check_clone
    from tracemark.extraction.store import load_export

    target = suspect_target(model, url, field=field, probabilities_field=probabilities_field, api_key=api_key,
                            batch_size=batch_size, timeout=timeout, arch=arch, shape_option=input_shape,
                            classes_option=classes)  # before any store is opened: a bad suspect is refused first
    if evidence is not None:
        source = load_export(evidence)
        evidence_sha256 = _sha256(evidence)
    else:
        source, evidence_sha256 = open_evidence(responses_db)
    ids, groups = None, []
    if client or group or groups_created_within is not None:
        from tracemark.extraction.coalitions import groups_created_together
        from tracemark.serve.clients import ClientStore

        clients = ClientStore(clients_db)
        ids = [clients.get(name).id for name in client] or None
        groups = [[clients.get(name.strip()).id for name in text.split(",") if name.strip()] for text in group]
        if groups_created_within is not None:
            groups += groups_created_together(clients.list(), groups_created_within)
    result = check_clone(source, target, alpha=alpha, clients=ids, show_progress=not as_json,
                         member_alpha=member_alpha, max_coalition=max_coalition, groups=groups)
    record_event(ledger, record_clone_check, result, evidence_sha256, quiet=as_json)
    emit(result, as_json)


def record_clone_check(ledger: Any, result: Any, evidence_sha256: str) -> Any:
    """Append a clone check (:class:`~tracemark.extraction.clones.CloneCheck`) and the evidence it used to ``ledger``."""
    named = result.named
    coalition = result.coalition if result.coalition is not None and result.coalition.named else None
    return ledger.append(CLONE_CHECK, {
        "suspect": result.suspect, "outcome": result.outcome, "alpha": result.alpha, "margin_log10": result.margin,
        "named_client_id": named.client_id if named else None, "p_value": result.clients[0].p_adjusted if result.clients else None,
        "named_client_ids": [c.client_id for c in result.named_clients],
        "coalition_client_ids": [m.client_id for m in coalition.members] if coalition else None,
        "coalition_p_value": coalition.p_adjusted if coalition else None,
        "evidence_sha256": evidence_sha256})


def open_evidence(responses_db: Path) -> tuple[Any, str]:
    """The response store at ``responses_db`` (which must exist and hold marked answers) and its SHA-256."""
    from tracemark.extraction.errors import NoMarkedResponsesError
    from tracemark.extraction.store import ResponseStore

    _require(responses_db)
    store = ResponseStore(responses_db)
    if not any(c.marked for c in store.clients()):  # refuse before the suspect is asked anything
        raise NoMarkedResponsesError(f"{responses_db} holds no marked answers; serve with response marking on first")
    return store, _sha256(responses_db)


def _sha256(path: Path) -> str:
    from tracemark.ledger.events import file_sha256

    return file_sha256(path)


@responses_app.command("export")
def export(
    out: Path = typer.Option(..., "--out", help="JSON file to write (0600: it holds the marked inputs)."),
    client: Optional[str] = typer.Option(None, help="Only this client (name or id; needs --clients-db)."),
    responses_db: Path = RESPONSES_DB_OPT,
    clients_db: Path = CLIENTS_DB_OPT,
    record: bool = typer.Option(False, "--record", help="Attach the export to the evidence ledger ($TRACEMARK_LEDGER)."),
    ledger: Optional[Path] = typer.Option(None, "--ledger", help="Ledger directory (default $TRACEMARK_LEDGER)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Export marked inputs and served answers (the evidence), optionally into the ledger so bundles carry it."""
    from tracemark.extraction.store import ResponseStore

    _require(responses_db)
    client_id = None
    if client:
        from tracemark.serve.clients import ClientStore

        client_id = ClientStore(clients_db).get(client).id
    result = ResponseStore(responses_db).export(out, client_id)
    if record:
        from tracemark.errors import LedgerError
        from tracemark.ledger import configured_ledger

        target = configured_ledger(ledger)
        if target is None:
            raise LedgerError("--record needs a ledger: --ledger DIR or $TRACEMARK_LEDGER")
        digest = target.attach(out.read_bytes())
        entry = target.append(RESPONSES_EXPORTED, {"transcript_sha256": digest, "clients": result.clients, "marked": result.marked,
                                                   "client_id": client_id})
        if not as_json:
            error_console.print(f"ledger: appended entry #{entry.seq} ({entry.event})")
    emit(result, as_json)


@responses_app.command("alerts")
def alerts(
    alerts_db: Optional[Path] = typer.Option(None, "--alerts-db", help="The file `serve --alerts-db` wrote alerts to."),
    audit_db: Path = typer.Option(Path("audit.sqlite"), "--audit-db", envvar="TRACEMARK_AUDIT_DB",
                                  help="The server's audit log, where alerts go without --alerts-db."),
    client: Optional[str] = typer.Option(None, help="Only this client (name or id; needs --clients-db)."),
    clients_db: Path = CLIENTS_DB_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """List the stealing monitor's alerts, oldest first."""
    from tracemark.extraction.monitor import AlertStore
    from tracemark.serve.errors import ServeConfigError

    source = alerts_db or audit_db
    if not source.is_file():
        raise ServeConfigError(f"no alert database at {source}; give the file serve wrote them to: --alerts-db PATH "
                               "(if serve had one) or --audit-db PATH")
    client_id = None
    if client:
        from tracemark.serve.clients import ClientStore

        client_id = ClientStore(clients_db).get(client).id
    emit(Listing(AlertStore(str(source)).list(client_id)), as_json)


def register(root: typer.Typer) -> None:
    """Add the ``responses`` group."""
    root.add_typer(responses_app, name="responses")


__all__ = ["register", "responses_app", "CLONE_CHECK", "RESPONSES_EXPORTED"]
