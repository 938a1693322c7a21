"""When a kind of evidence was committed: the ledger entry that vouches for its secret, read back.

A commitment counts against a suspect only if it was made before the suspect existed (the False Claims
attack crafts transferable inputs against a model already seen). The owner-signed ledger says when each
secret was made: ``key-created`` for a watermark key, ``customer-code-created`` for each customer code.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

from tracemark._util.canonical import canonical_json, sha256_hex
from tracemark.evidence.protocol import Commitment
from tracemark.ledger.entries import Entry
from tracemark.ledger.store import Ledger
from tracemark.ledger.timestamp import TIMESTAMPED

LEDGER_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"
DIGEST_DOMAIN = b"tracemark-evidence-commitment/v1\n"


def parse_ledger_time(text: str) -> datetime:
    """A ledger entry's ``time`` (``2025-03-01T12:00:00.000000Z``) as an aware UTC datetime."""
    return datetime.strptime(text, LEDGER_TIME).replace(tzinfo=timezone.utc)


def digest_of(document: object) -> str:
    """Hex SHA-256 of a JSON-able document under this module's domain (what a kind documents it commits to)."""
    return sha256_hex(DIGEST_DOMAIN + canonical_json(document))


def ledger_commitment(ledger: Ledger | None, digest: str, event: str, field: str, values: Sequence[str]) -> Commitment:
    """``digest`` with the time ``ledger`` vouches for: that of the last of the ``event`` entries (the first for each
    value) whose ``payload[field]`` holds one of ``values``; every value must be committed, else the time is unknown.

    The time is the ``gen_time`` of the RFC 3161 token whose ``timestamped`` entry covers that entry (the token
    itself is checked by ``tracemark ledger verify`` against the pinned authority), else the owner-signed entry's own
    time; the chain is checked from the start.
    """
    if ledger is None:
        return Commitment(digest, None, "no ledger given: nothing vouches for when it was made")
    entries = ledger.entries()
    wanted = set(values)
    first: dict[str, Entry] = {}
    for entry in entries:
        value = entry.payload.get(field)
        if entry.event == event and value in wanted and value not in first:
            first[value] = entry
    missing = wanted - set(first)
    if missing:
        return Commitment(digest, None, f"ledger {ledger.directory}: {len(missing)} of {len(wanted)} not committed by a "
                                        f"{event} entry; nothing vouches for when they were made")
    last = max(first.values(), key=lambda e: e.seq)
    token = next((e for e in entries if e.event == TIMESTAMPED and e.payload["first_seq"] <= last.seq <= e.payload["last_seq"]),
                 None)
    if token is None:
        return Commitment(digest, parse_ledger_time(last.time),
                          f"ledger {ledger.directory} entry #{last.seq} ({event}; owner-signed time, not time-stamped yet)")
    gen_time = datetime.fromisoformat(str(token.payload["gen_time"]).replace("Z", "+00:00"))
    return Commitment(digest, gen_time if gen_time.tzinfo else gen_time.replace(tzinfo=timezone.utc),
                      f"ledger {ledger.directory} entry #{last.seq} ({event}), RFC 3161 token from "
                      f"{token.payload['authority']} (entry #{token.seq})")
