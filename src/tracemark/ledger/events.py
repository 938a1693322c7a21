"""Ledger configuration for other commands, and one-call helpers for each event type."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tracemark._util.canonical import canonical_json
from tracemark.errors import LedgerError
from tracemark.keys import WatermarkKey
from tracemark.ledger.entries import Entry
from tracemark.ledger.identity import OwnerIdentity
from tracemark.ledger.store import Ledger

ENV_LEDGER = "TRACEMARK_LEDGER"
ENV_OWNER_KEY = "TRACEMARK_OWNER_KEY"
ENV_OWNER_PASSPHRASE = "TRACEMARK_OWNER_PASSPHRASE"
KEY_CREATED = "key-created"
MODEL_EMBEDDED = "model-embedded"
MODEL_PACKAGED = "model-packaged"
VERIFICATION = "verification"
LINEAGE_CREATED = "lineage-created"
VERDICT_FIELDS = ("verdict", "p_value", "alpha", "queries", "matches", "null_rate", "key_commitment")


def configured_ledger(
    path: str | os.PathLike[str] | None = None,
    owner_key: str | os.PathLike[str] | None = None,
    passphrase: str | None = None,
) -> Ledger | None:
    """The ledger to append to: ``path`` or ``$TRACEMARK_LEDGER``; ``None`` if neither is set.

    The owner key comes from ``owner_key`` or ``$TRACEMARK_OWNER_KEY`` and its passphrase from
    ``passphrase`` or ``$TRACEMARK_OWNER_PASSPHRASE``.
    """
    path = path or os.environ.get(ENV_LEDGER)
    if not path:
        return None
    owner_key = owner_key or os.environ.get(ENV_OWNER_KEY)
    if not owner_key:
        raise LedgerError(f"a ledger is configured ({path}) but no owner key; set {ENV_OWNER_KEY} (and {ENV_OWNER_PASSPHRASE})")
    passphrase = passphrase if passphrase is not None else os.environ.get(ENV_OWNER_PASSPHRASE, "")
    return Ledger.open(path, OwnerIdentity.load(owner_key, passphrase))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _scalars(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if isinstance(v, (str, int, float, bool)) or v is None}


def _as_dict(doc: Any) -> dict[str, Any]:
    doc = doc.to_dict() if hasattr(doc, "to_dict") else doc
    if not isinstance(doc, dict):
        raise TypeError("expected a dict or an object with to_dict()")
    return json.loads(canonical_json(doc))


def record_key_created(ledger: Ledger, key: WatermarkKey) -> Entry:
    """Commit to a new key: its commitment and public facts, and the trigger-set hash (never the seed)."""
    triggers = key.triggers()
    payload = {
        "key_commitment": key.commitment(),
        "kind": key.kind,
        "input_shape": list(key.input_shape),
        "num_classes": key.num_classes,
        "n_triggers": key.n_triggers,
        "label_mode": key.label_mode,
        "trigger_sha256": triggers.sha256(),
        "null_rate": triggers.null_rate,
    }
    return ledger.append(KEY_CREATED, payload)


def record_embedded(ledger: Ledger, model_sha256: str, key_commitment: str, report: Any = None, model_name: str = "") -> Entry:
    """Record that a model (by hash) was marked with a key; ``report`` (dict) is attached by hash."""
    payload: dict[str, Any] = {"model_sha256": model_sha256, "key_commitment": key_commitment, "model_name": model_name}
    if report is not None:
        report = _as_dict(report)
        payload["report_sha256"] = ledger.attach(canonical_json(report))
        payload["report"] = _scalars(report)
    return ledger.append(MODEL_EMBEDDED, payload)


def record_packaged(
    ledger: Ledger,
    package_sha256: str,
    customer: str,
    model_sha256: str | None = None,
    key_commitment: str | None = None,
    licence: dict[str, Any] | None = None,
) -> Entry:
    """Record that a protected package (by hash) was made for ``customer``."""
    payload = {
        "package_sha256": package_sha256,
        "customer": customer,
        "model_sha256": model_sha256,
        "key_commitment": key_commitment,
        "licence": _scalars(licence or {}),
    }
    return ledger.append(MODEL_PACKAGED, payload)


def record_verification(
    ledger: Ledger, verdict: Any, transcript: bytes | os.PathLike[str] | None = None, target: str | None = None
) -> Entry:
    """Record a verification run: the verdict (dict or ``Verdict``) and transcript (bytes or a file path) are attached by hash."""
    doc = _as_dict(verdict)
    payload: dict[str, Any] = {"target": target if target is not None else doc.get("target")}
    payload.update({k: doc[k] for k in VERDICT_FIELDS if k in doc})
    payload["verdict_sha256"] = ledger.attach(canonical_json(doc))
    if transcript is not None:
        data = transcript if isinstance(transcript, bytes) else Path(transcript).read_bytes()
        payload["transcript_sha256"] = ledger.attach(data)
    return ledger.append(VERIFICATION, payload)


def record_lineage(ledger: Ledger, lineage: Any) -> Entry:
    """Commit to a lineage fingerprint (a :class:`~tracemark.lineage.Lineage`): its commitment and public facts."""
    return ledger.append(LINEAGE_CREATED, {"lineage_commitment": lineage.commitment(), **lineage_facts(lineage)})


def lineage_facts(lineage: Any) -> dict[str, Any]:
    """What a ``lineage-created`` entry records besides the commitment (a revealed file must agree on each)."""
    return {"n_inputs": int(len(lineage.labels)), "input_shape": list(lineage.input_shape), "num_classes": lineage.num_classes,
            "source_sha256": lineage.source_sha256, "null_rate": lineage.calibration.rate}
