"""One ledger entry: fields, canonical bytes, hash and owner signature (docs/formats/ledger.md)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tracemark._util.canonical import canonical_json, sha256_hex
from tracemark.errors import FormatVersionError, LedgerError
from tracemark.ledger.errors import EntryTamperedError, MalformedEntryError
from tracemark.ledger.identity import OwnerIdentity, verify_signature

FORMAT = "tracemark-ledger-entry"
VERSION = 1
DOMAIN = b"tracemark-ledger-entry/v1\n"
GENESIS_PREV = "0" * 64
EVENT_RE = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX128 = re.compile(r"^[0-9a-f]{128}$")
_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
_SIGNED_FIELDS = ("format", "version", "seq", "time", "event", "payload", "prev", "owner")
_ALL_FIELDS = frozenset(_SIGNED_FIELDS + ("hash", "sig"))
MAX_ENTRY_BYTES = 1 << 20
"""Longest ledger line (1 MiB): entries hold hashes and small facts; documents go to attachments."""


def utc_now() -> str:
    """Current UTC time in the ledger's form, e.g. ``2025-03-01T12:00:00.000000Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Entry:
    """A signed ledger entry. ``hash`` is SHA-256 of :meth:`signing_bytes`; ``sig`` signs the same bytes."""

    seq: int
    time: str
    event: str
    payload: dict[str, Any]
    prev: str
    owner: str
    hash: str
    sig: str

    def signed_fields(self) -> dict[str, Any]:
        """The fields covered by the hash and signature."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "seq": self.seq,
            "time": self.time,
            "event": self.event,
            "payload": self.payload,
            "prev": self.prev,
            "owner": self.owner,
        }

    def signing_bytes(self) -> bytes:
        """``DOMAIN`` + canonical JSON of :meth:`signed_fields`."""
        return DOMAIN + canonical_json(self.signed_fields())

    def to_dict(self) -> dict[str, Any]:
        """All fields, as stored."""
        return {**self.signed_fields(), "hash": self.hash, "sig": self.sig}

    def encode(self) -> bytes:
        """The entry's line in the ledger file: canonical JSON and a newline."""
        return canonical_json(self.to_dict()) + b"\n"

    def check(self, public_key: Ed25519PublicKey) -> None:
        """Raise unless the hash matches the content and the owner's signature verifies."""
        if sha256_hex(self.signing_bytes()) != self.hash:
            raise EntryTamperedError(f"entry {self.seq}: content does not match its hash; the entry was edited")
        verify_signature(public_key, bytes.fromhex(self.sig), self.signing_bytes(), f"entry {self.seq}")

    def __str__(self) -> str:
        return f"#{self.seq} {self.time} {self.event} {json.dumps(self.payload, sort_keys=True)}"


def make_entry(owner: OwnerIdentity, seq: int, event: str, payload: dict[str, Any], prev: str, time: str | None = None) -> Entry:
    """Build and sign a new entry (checks the event name and that the payload is canonical-JSON-able)."""
    if not EVENT_RE.match(event):
        raise ValueError(f"event name {event!r} must be lower-case letters, digits and dashes")
    payload = json.loads(canonical_json(payload))  # plain JSON types only, round-trip exact
    unsigned = Entry(seq, time or utc_now(), event, payload, prev, owner.fingerprint(), "", "")
    if len(unsigned.encode()) + 192 > MAX_ENTRY_BYTES:  # + hash and signature
        raise LedgerError(f"the {event} entry would exceed {MAX_ENTRY_BYTES:,} bytes; attach large documents with Ledger.attach")
    data = unsigned.signing_bytes()
    return Entry(**{**asdict(unsigned), "payload": payload, "hash": sha256_hex(data), "sig": owner.sign(data).hex()})


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(data: bytes, where: str, error: type[Exception], what: str) -> Any:
    """Strict JSON from untrusted bytes: UTF-8, no NaN/Infinity; any failure is ``error`` naming ``where``."""
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:  # includes UnicodeDecodeError, JSONDecodeError, over-long integers
        raise error(f"{where}: not {what} ({str(exc)[:200]}); it was altered or corrupted") from exc


def recanonical(encode: Callable[[], bytes], where: str, error: type[Exception]) -> bytes:
    """``encode()`` of parsed untrusted content; content that has no canonical form (a lone surrogate) is ``error``."""
    try:
        return encode()
    except ValueError as exc:
        raise error(f"{where}: has no canonical form ({str(exc)[:200]}); it was altered") from exc


def decode_entry(line: bytes, where: str) -> Entry:
    """Parse one ledger line (without its newline); it must be exactly the canonical encoding.

    Raises :class:`MalformedEntryError` or :class:`FormatVersionError`. Does not check hash or signature.
    """
    if len(line) > MAX_ENTRY_BYTES:
        raise MalformedEntryError(f"{where}: {len(line):,} bytes, over the {MAX_ENTRY_BYTES:,} an entry may have; the ledger was altered")
    doc = parse_json(line, where, MalformedEntryError, "a JSON entry")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise MalformedEntryError(f"{where}: not a tracemark ledger entry (format field missing or wrong)")
    if doc.get("version") != VERSION:
        raise FormatVersionError(f"{where}: ledger entry version {doc.get('version')!r}; this release reads {VERSION}")
    if set(doc) != _ALL_FIELDS:
        raise MalformedEntryError(f"{where}: entry fields {sorted(doc)} differ from {sorted(_ALL_FIELDS)}")
    ok = (
        type(doc["seq"]) is int
        and doc["seq"] >= 0
        and isinstance(doc["time"], str)
        and _TIME_RE.match(doc["time"])
        and isinstance(doc["event"], str)
        and EVENT_RE.match(doc["event"])
        and isinstance(doc["payload"], dict)
        and all(isinstance(doc[k], str) and _HEX64.match(doc[k]) for k in ("prev", "owner", "hash"))
        and isinstance(doc["sig"], str)
        and _HEX128.match(doc["sig"])
    )
    if not ok:
        raise MalformedEntryError(f"{where}: an entry field has the wrong type or form")
    if recanonical(lambda: canonical_json(doc), where, MalformedEntryError) != line:
        raise MalformedEntryError(f"{where}: entry is not in canonical form; its bytes were altered")
    return Entry(**{k: doc[k] for k in ("seq", "time", "event", "payload", "prev", "owner", "hash", "sig")})
