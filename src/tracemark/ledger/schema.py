"""Payload schemas of the events the verifier reads: every field's type and length, checked before use.

A signature proves who wrote an entry, not that its payload is well formed: without a pinned
owner key anyone can sign a ledger. :func:`check_payload` runs on every entry of every chain that
is verified and raises :class:`~tracemark.ledger.errors.MalformedPayloadError` naming the entry
and the field, so nothing later trips over a missing key or a wrong type.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from tracemark.ledger.errors import MalformedPayloadError

MAX_TEXT = 4096
"""Longest free-text payload field (names, URLs, customers), in characters."""
MAX_SEQ = (1 << 63) - 1
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_RECORD = re.compile(r"tokens/\d{8,19}-\d{8,19}\.json")
_TORN = re.compile(r"torn/\d+-[0-9a-f]{16}\.bin")
ATTACHMENT_FIELDS = ("verdict_sha256", "transcript_sha256", "report_sha256")

Check = Callable[[Any], bool]


def _hex64(v: Any) -> bool:
    return isinstance(v, str) and _HEX64.fullmatch(v) is not None


def _text(v: Any) -> bool:
    return isinstance(v, str) and len(v) <= MAX_TEXT


def _count(v: Any) -> bool:
    return type(v) is int and 0 <= v <= MAX_SEQ


def _number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _scalars(v: Any) -> bool:
    return isinstance(v, dict) and len(v) <= 256 and all(
        _text(k) and (v[k] is None or type(v[k]) is bool or _number(v[k]) or _text(v[k])) for k in v
    )


def _shape(v: Any) -> bool:
    return isinstance(v, list) and 1 <= len(v) <= 8 and all(_count(d) for d in v)


def _opt(check: Check) -> Check:
    return lambda v: v is None or check(v)


# event -> (required fields, optional fields); a known event may have no other fields
SCHEMAS: dict[str, tuple[dict[str, Check], dict[str, Check]]] = {
    "ledger-created": ({"ledger_id": lambda v: isinstance(v, str) and _HEX32.fullmatch(v) is not None, "owner_public_key": _hex64}, {}),
    "key-created": (
        {"key_commitment": _hex64, "kind": _text, "input_shape": _shape, "num_classes": _count, "n_triggers": _count,
         "label_mode": _text, "trigger_sha256": _hex64, "null_rate": _number},
        {},
    ),
    "model-embedded": (
        {"model_sha256": _hex64, "key_commitment": _hex64, "model_name": _text},
        {"report_sha256": _hex64, "report": _scalars},
    ),
    "model-packaged": (
        {"package_sha256": _hex64, "customer": _text, "model_sha256": _opt(_hex64), "key_commitment": _opt(_hex64), "licence": _scalars},
        {},
    ),
    "verification": (
        {"target": _opt(_text), "verdict_sha256": _hex64},
        {"transcript_sha256": _hex64, "verdict": _opt(_text), "p_value": _opt(_number), "alpha": _opt(_number),
         "queries": _opt(_count), "matches": _opt(_count), "null_rate": _opt(_number), "key_commitment": _opt(_hex64)},
    ),
    "lineage-created": (
        {"lineage_commitment": _hex64, "n_inputs": _count, "input_shape": _shape, "num_classes": _count,
         "source_sha256": _hex64, "null_rate": _number},
        {},
    ),
    "timestamped": (
        {"first_seq": _count, "last_seq": _count, "root": _hex64, "record": lambda v: isinstance(v, str) and _RECORD.fullmatch(v) is not None,
         "record_sha256": _hex64, "gen_time": _text, "authority": _text, "root_fingerprint": _hex64},
        {},
    ),
    "tail-recovered": (
        {"offset": _count, "length": _count, "sha256": _hex64, "saved_as": lambda v: isinstance(v, str) and _TORN.fullmatch(v) is not None},
        {},
    ),
}


def check_payload(seq: int, event: str, payload: dict[str, Any]) -> None:
    """Raise :class:`MalformedPayloadError` unless ``payload`` fits ``event``'s schema.

    Events without a schema (written by other parts of tracemark) are only checked for the
    attachment fields the verifier follows, which must be SHA-256 hex.
    """
    where = f"entry {seq} ({event})"
    for name in ATTACHMENT_FIELDS:
        if name in payload and not _hex64(payload[name]):
            raise MalformedPayloadError(f"{where}: {name} is not a SHA-256 hex digest; the entry is malformed")
    if event not in SCHEMAS:
        return
    required, optional = SCHEMAS[event]
    missing = sorted(set(required) - set(payload))
    extra = sorted(set(payload) - set(required) - set(optional))
    if missing or extra:
        raise MalformedPayloadError(f"{where}: payload fields missing {missing}, unexpected {extra[:8]}; the entry is malformed")
    for name, check in {**required, **optional}.items():
        if name in payload and not check(payload[name]):
            raise MalformedPayloadError(f"{where}: payload field {name!r} has the wrong type, form or length; the entry is malformed")
    if event == "timestamped":
        first, last = payload["first_seq"], payload["last_seq"]
        if not first <= last < seq or payload["record"] != f"tokens/{first:08d}-{last:08d}.json":
            raise MalformedPayloadError(f"{where}: covers entries {first}–{last}, which is not a range before it named by its record file")
