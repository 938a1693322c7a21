"""``tracemark verify``: check a local model file or a remote prediction API for a key's mark, and with more kinds of
evidence (customer codes, the weight code, marked responses, the lineage fingerprint) combine them into one verdict."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from tracemark.cli import _options as suspect
from tracemark.cli._options import LEDGER_HELP, load_key, record_event, save_transcript, suspect_target
from tracemark.cli._output import emit

if TYPE_CHECKING:
    from torch import nn

    from tracemark.evidence import Evidence
    from tracemark.fingerprint import Registry
    from tracemark.keys import WatermarkKey
    from tracemark.ledger import Ledger
    from tracemark.targets import Target
    from tracemark.verification import Verdict


def verify(
    key: Optional[Path] = typer.Option(None, help="Watermark key file (with --registry: the master key of the customer codes)."),
    model: Optional[Path] = suspect.MODEL_OPT,
    url: Optional[str] = suspect.URL_OPT,
    field: str = suspect.FIELD_OPT,
    probabilities_field: Optional[str] = typer.Option(
        None, help="With --url: dotted path of probability rows, if the API gives them (--responses-db then ranks)."),
    template: Optional[str] = suspect.TEMPLATE_OPT,
    header: list[str] = suspect.HEADER_OPT,
    api_key: Optional[str] = suspect.API_KEY_OPT,
    budget: Optional[int] = suspect.BUDGET_OPT,
    rate: Optional[float] = suspect.RATE_OPT,
    batch_size: int = suspect.BATCH_OPT,
    timeout: float = suspect.TIMEOUT_OPT,
    transcript: Optional[Path] = suspect.TRANSCRIPT_OPT,
    arch: Optional[str] = suspect.ARCH_OPT,
    input_shape: Optional[str] = suspect.INPUT_SHAPE_OPT,
    classes: Optional[int] = suspect.CLASSES_OPT,
    reference: list[Path] = typer.Option([], help="Independently trained model file for an empirical null (repeatable)."),
    reference_arch: Optional[str] = typer.Option(
        None, "--reference-arch", help="Build every --reference with this (as --arch) and load its file as weights."),
    registry: Optional[Path] = typer.Option(
        None, help="Customer registry ('tracemark fingerprint'): also test the customer codes (needs --key, the master key)."),
    base: Optional[Path] = typer.Option(
        None, "--base", help="With --registry and --model: the base model the copies were made from; also tests the "
                             "weight code (checked against the registry's base hash)."),
    no_align: bool = typer.Option(False, "--no-align", help="With --base: compare the suspect's weights as they are, "
                                  "without first aligning its hidden units to the base's."),
    responses_db: Optional[Path] = typer.Option(
        None, "--responses-db", help="Also test the marked answers of `tracemark serve --marking` (store of marked responses)."),
    lineage: Optional[Path] = typer.Option(
        None, "--lineage", help="Also test the lineage fingerprint in this file ('tracemark lineage new')."),
    suspect_seen: Optional[str] = typer.Option(
        None, "--suspect-seen", metavar="ISO-TIME", help="When the suspect was first seen (e.g. 2026-03-01T12:00:00+00:00): "
                                                         "evidence committed at or after it cannot count."),
    alpha: float = typer.Option(1e-9, help="False-accusation rate: call 'copy' only when p <= alpha (family-wise over "
                                           "every kind of evidence given)."),
    max_queries: Optional[int] = typer.Option(None, help="Ask at most this many triggers (and customer-code queries)."),
    ledger: Optional[Path] = typer.Option(None, "--ledger", help=LEDGER_HELP + " Commitment times are read from it."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Check a suspect for the watermark and print the verdict with its p-value; with --registry, --base,
    --responses-db or --lineage, test every kind of evidence given and print each and their family-wise combination."""
    if key is None and responses_db is None and lineage is None:
        raise typer.BadParameter("give --key (the watermark key), --responses-db and/or --lineage", param_hint="--key")
    if registry is not None and key is None:
        raise typer.BadParameter("the customer codes derive from the master key: give --key with --registry",
                                 param_hint="--registry")
    if base is not None and (registry is None or model is None):
        raise typer.BadParameter("the weight test compares the suspect's weights (--model) with the base: give "
                                 "--registry and --model with --base", param_hint="--base")
    if reference and key is None:
        raise typer.BadParameter("references calibrate the trigger test: give --key with --reference", param_hint="--reference")
    seen = _parse_seen(suspect_seen)
    wm_key = load_key(key) if key is not None else None
    target = suspect_target(model, url, num_classes=wm_key.num_classes if wm_key else None, field=field,
                            probabilities_field=probabilities_field, template=template, header=header, api_key=api_key,
                            budget=budget, rate=rate, batch_size=batch_size, timeout=timeout, arch=arch,
                            input_shape=wm_key.input_shape if wm_key else None, shape_option=input_shape,
                            classes_option=classes)
    from tracemark.targets import load_target

    references = [_reference(path, reference_arch, wm_key, input_shape, classes) if reference_arch else load_target(path)
                  for path in reference]
    from tracemark.ledger import record_verification

    if wm_key is not None and registry is None and responses_db is None and lineage is None and seen is None:
        verdict = _verify_key(wm_key, target, alpha, max_queries, references, batch_size, transcript, as_json)
        record_event(ledger, record_verification, verdict, transcript=transcript if url is not None else None, quiet=as_json)
        emit(verdict, as_json)
        return
    # every store is opened and checked before the suspect is asked anything
    evidence = _evidence(wm_key, registry, base, no_align, responses_db, lineage, seen, ledger, arch, input_shape, classes,
                         max_queries, references, batch_size)
    from tracemark.evidence import verify_all

    try:
        combined = verify_all(target, evidence, alpha, suspect_seen=seen)
    finally:
        save_transcript(target, transcript, as_json)
    record_event(ledger, record_verification, combined, transcript=transcript if url is not None else None, quiet=as_json)
    emit(combined, as_json)


def _verify_key(wm_key: WatermarkKey, target: Target, alpha: float, max_queries: Optional[int], references: list[Target],
                batch_size: int, transcript: Optional[Path], as_json: bool) -> Verdict:
    """The key alone: today's ``verify`` and its :class:`~tracemark.verification.Verdict`."""
    from tracemark.verification import verify as run_verify

    try:
        return run_verify(wm_key, target, alpha=alpha, max_queries=max_queries, references=references, batch_size=batch_size)
    finally:
        save_transcript(target, transcript, as_json)


def _evidence(wm_key: Optional[WatermarkKey], registry: Optional[Path], base: Optional[Path], no_align: bool,
              responses_db: Optional[Path], lineage: Optional[Path], seen: Optional[datetime], ledger_path: Optional[Path],
              arch: Optional[str], input_shape: Optional[str], classes: Optional[int], max_queries: Optional[int],
              references: list[Target], batch_size: int) -> list[Evidence]:
    """The kinds of evidence the options give, each with the ledger that vouches for its commitment."""
    from tracemark.evidence import ResponseEvidence, TraceEvidence, TriggerEvidence, WeightEvidence

    ledger = _read_ledger(ledger_path)
    evidence: list[Evidence] = []
    if wm_key is not None:
        evidence.append(TriggerEvidence(wm_key, ledger=ledger, max_queries=max_queries, references=references,
                                        batch_size=batch_size))
    if registry is not None:
        from tracemark.fingerprint import Registry

        reg = Registry.open(registry)
        scheme = reg.scheme(wm_key)
        evidence.append(TraceEvidence(scheme, reg.customers(), ledger=ledger, max_queries=max_queries, batch_size=batch_size))
        if base is not None:
            evidence.append(WeightEvidence(scheme, reg.customers(), _base_model(reg, base, arch, input_shape, classes, wm_key),
                                           ledger=ledger, align=not no_align))
    if responses_db is not None:
        from tracemark.cli.responses import open_evidence

        evidence.append(ResponseEvidence(open_evidence(responses_db)[0]))
    if lineage is not None:
        from tracemark.lineage import LineageEvidence

        evidence.append(LineageEvidence.load(lineage, ledger=ledger_path, suspect_since=seen))
    return evidence


def _base_model(reg: Registry, base: Path, arch: Optional[str], input_shape: Optional[str], classes: Optional[int],
                wm_key: WatermarkKey) -> nn.Module:
    """``--base``, checked against the registry's hash and built as the suspect is (``--arch``) when given."""
    from tracemark.ledger import file_sha256

    reg.check_base(file_sha256(base))
    if arch is not None:
        return suspect.arch_model(arch, base, input_shape, classes, default_shape=wm_key.input_shape,
                                  default_classes=wm_key.num_classes).module
    from tracemark.data import load_model

    return load_model(base)


def _read_ledger(path: Optional[Path]) -> Optional[Ledger]:
    """The ledger at ``path`` or ``$TRACEMARK_LEDGER``, opened to read commitment times (no owner key needed), or None."""
    import os

    from tracemark.ledger import ENV_LEDGER, Ledger

    where = path or os.environ.get(ENV_LEDGER)
    return Ledger.open(where) if where else None


def _parse_seen(text: Optional[str]) -> Optional[datetime]:
    """``--suspect-seen`` as an aware datetime (ISO 8601 with a time zone)."""
    from tracemark.errors import InvalidOptionError

    if text is None:
        return None
    try:
        seen = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidOptionError(f"--suspect-seen {text!r}: write an ISO 8601 time such as 2026-03-01T12:00:00+00:00") from exc
    if seen.tzinfo is None:
        raise InvalidOptionError(f"--suspect-seen {text!r} has no time zone; add one (+00:00 or Z for UTC)")
    return seen


def _reference(path: Path, arch: str, wm_key, input_shape: Optional[str], classes: Optional[int]):
    """A ``--reference`` built by ``--reference-arch`` with ``path`` as its weights (shape and classes as for ``--arch``)."""
    from tracemark.targets.local import TorchTarget

    built = suspect.arch_model(arch, path, input_shape, classes, default_shape=wm_key.input_shape,
                               default_classes=wm_key.num_classes)
    return TorchTarget(built.module, description=str(path), input_shape=built.input_shape, num_classes=built.num_classes)


def register(root: typer.Typer) -> None:
    """Add ``verify``."""
    root.command("verify")(verify)
