"""The lineage commitment in the evidence ledger: recording it, and finding when it was made.

``record`` appends a ``lineage-created`` entry (the commitment digest and public facts, never the inputs).
``committed`` finds that entry in a chain-checked ledger and returns a
:class:`~tracemark.evidence.protocol.Commitment` whose time is the RFC 3161 token's ``gen_time`` when a
``timestamped`` entry covers it (the token itself is checked by ``tracemark ledger verify`` against the
pinned authority), else the owner-signed entry's own time.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from tracemark.evidence.protocol import Commitment
from tracemark.ledger.entries import Entry
from tracemark.ledger.events import LINEAGE_CREATED, record_lineage
from tracemark.ledger.store import Ledger
from tracemark.lineage.fileformat import Lineage

TIMESTAMPED = "timestamped"


def record(ledger: Ledger, lineage: Lineage) -> Entry:
    """Append the lineage's commitment to ``ledger`` (signed by its owner key)."""
    return record_lineage(ledger, lineage)


def _parse_time(text: str) -> datetime:
    """A ledger time (``…T12:00:00.000000Z``) or a token's ``gen_time`` (ISO 8601) as an aware UTC datetime."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def committed(ledger_dir: str | os.PathLike[str], digest: str) -> Commitment:
    """The commitment ``digest`` with the time the ledger at ``ledger_dir`` vouches for (``None`` if it holds no
    ``lineage-created`` entry for it). The chain is checked from the start; a broken one raises."""
    entries = Ledger.open(Path(ledger_dir)).entries()
    entry = next((e for e in entries if e.event == LINEAGE_CREATED and e.payload.get("lineage_commitment") == digest), None)
    if entry is None:
        return Commitment(digest, None, f"not in the ledger at {ledger_dir}")
    token = next((e for e in entries if e.event == TIMESTAMPED and e.payload["first_seq"] <= entry.seq <= e.payload["last_seq"]), None)
    if token is None:
        return Commitment(digest, _parse_time(entry.time), f"ledger entry {entry.seq} (owner-signed, not yet time-stamped)")
    return Commitment(digest, _parse_time(str(token.payload["gen_time"])),
                      f"ledger entry {entry.seq}, RFC 3161 token from {token.payload['authority']} (entry {token.seq})")
