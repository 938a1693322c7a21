"""Checking a whole ledger directory: chain, signatures, head, tokens, attachments."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tracemark._util.canonical import sha256_hex
from tracemark.ledger.chain import verify_chain
from tracemark.ledger.entries import Entry
from tracemark.errors import LedgerError
from tracemark.ledger.errors import AttachmentTamperedError, TokenTamperedError
from tracemark.ledger.identity import fingerprint
from tracemark.ledger.schema import ATTACHMENT_FIELDS
from tracemark.ledger.store import Ledger, check_mark
from tracemark.ledger.timestamp import TIMESTAMPED, TokenInfo, decode_record, last_covered_seq
from tracemark.ledger.witness import load_witness, stray_token_witnesses
from tracemark.trust.authorities import authority_warnings


@dataclass
class LedgerReport:
    """The outcome of :func:`verify_ledger` (it raises on failure, so a report means the checks passed)."""

    path: str
    ledger_id: str
    owner_fingerprint: str
    entries: int
    events: dict[str, int]
    tokens: list[dict[str, Any]]
    untimestamped: list[int]
    torn_tail_bytes: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return dict(self.__dict__)

    def __str__(self) -> str:
        lines = [
            f"ledger {self.path}: {self.entries} entries, chain and signatures OK",
            f"  owner  {self.owner_fingerprint}",
            "  events " + ", ".join(f"{k} ×{v}" for k, v in sorted(self.events.items())),
        ]
        lines += [f"  token  entries {t['first_seq']}–{t['last_seq']}: {TokenInfo(**t['info'])}" for t in self.tokens]
        if self.untimestamped:
            lines.append(f"  not yet time-stamped: entries {self.untimestamped[0]}–{self.untimestamped[-1]}")
        lines += [f"  WARNING {w}" for w in self.warnings]
        return "\n".join(lines)


def attachment_hashes(entry: Entry) -> list[str]:
    """SHA-256s of the attachments an entry refers to."""
    return [str(entry.payload[k]) for k in ATTACHMENT_FIELDS if isinstance(entry.payload.get(k), str)]


def check_tokens(
    entries: list[Entry],
    read_member: Any,
    trusted_roots: list[x509.Certificate] | None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Verify every token a ``timestamped`` entry refers to; ``read_member(name) -> bytes | None``."""
    results = []
    for entry in entries:
        if entry.event != TIMESTAMPED:
            continue
        name = str(entry.payload["record"])
        data = read_member(name)
        if data is None:
            raise TokenTamperedError(f"entry {entry.seq} refers to {name}, which is missing")
        if sha256_hex(data) != entry.payload["record_sha256"]:
            raise TokenTamperedError(f"{name}: differs from the record entry {entry.seq} hashed; the token was altered")
        record = decode_record(data, name)
        if (record.first_seq, record.last_seq) != (entry.payload["first_seq"], entry.payload["last_seq"]):
            raise TokenTamperedError(f"{name}: covers other entries than entry {entry.seq} says")
        if record.ledger_id != entries[0].payload["ledger_id"]:
            raise TokenTamperedError(f"{name}: time-stamps another ledger than this one")
        info: TokenInfo = record.verify(entries, trusted_roots, now=now)
        results.append({"first_seq": record.first_seq, "last_seq": record.last_seq, "info": info, "record": name})
    return results


def untimestamped(entries: list[Entry]) -> list[int]:
    """Sequence numbers after the last time-stamped range (excluding ``timestamped`` records)."""
    last = last_covered_seq(entries)
    return [e.seq for e in entries if e.seq > last and e.event != TIMESTAMPED]


def verify_ledger(
    directory: str | os.PathLike[str],
    expected_key: Ed25519PublicKey | None = None,
    trusted_roots: list[x509.Certificate] | None = None,
    strict: bool = False,
    witnesses: list[str | os.PathLike[str]] = (),  # type: ignore[assignment]
    trust_any_authority: bool = False,
) -> LedgerReport:
    """Check a ledger directory end to end; raise a named error on the first failure.

    Rollback (entries cut and an older head restored) raises :class:`RollbackError` when any
    witness saw more: token records left in ``tokens/``, the store's high-water mark, or the
    ``witnesses`` files (exported bundles, saved heads, token records). A torn tail
    (interrupted append), stray tokens and missing attachments are warnings, raised with ``strict``.
    Time-stamp tokens need ``trusted_roots`` (the authority's root CA); without them the ledger is refused
    (:class:`~tracemark.ledger.errors.UnpinnedAuthorityError`) unless ``trust_any_authority`` accepts the
    root each token carries, with a warning.
    """
    ledger = Ledger.open(directory)
    entries, tail = ledger.read(allow_torn_tail=True)
    if tail and strict:
        ledger.read()  # raises TornTailError with the standard message
    key = verify_chain(entries, expected_key)
    ledger.check_head(entries)

    def read_member(name: str) -> bytes | None:
        path = ledger.directory / name
        return path.read_bytes() if path.is_file() else None

    tokens = check_tokens(entries, read_member, trusted_roots)
    ledger_id = str(entries[0].payload["ledger_id"])
    strays, warnings = stray_token_witnesses(ledger.tokens_dir, {t["record"] for t in tokens}, ledger_id, trusted_roots)
    for witness in strays + [load_witness(w, key, ledger_id, trusted_roots) for w in witnesses]:
        witness.check(entries)
    check_mark(entries, key)
    warnings += authority_warnings(len(tokens), trusted_roots, trust_any_authority)  # after every integrity check
    if tail:
        warnings.append(
            f"the ledger ends in {len(tail)} bytes of an interrupted append (torn tail); it is not an entry. "
            "The next append moves it to torn/ and records that in the chain."
        )
    for entry in entries:
        for digest in attachment_hashes(entry):
            path = ledger.attachment_path(digest)
            if not path.is_file():
                warnings.append(f"entry {entry.seq}: attachment {digest[:16]}… is missing (export will fail)")
            elif sha256_hex(path.read_bytes()) != digest:
                raise AttachmentTamperedError(f"attachment {digest} was altered (its content no longer has that hash)")
    if strict and warnings:
        raise LedgerError("strict check failed: " + "; ".join(warnings))
    return LedgerReport(
        path=str(Path(directory)),
        ledger_id=ledger_id,
        owner_fingerprint=fingerprint(key),
        entries=len(entries),
        events=dict(Counter(e.event for e in entries)),
        tokens=[{**t, "info": t["info"].to_dict()} for t in tokens],
        untimestamped=untimestamped(entries),
        torn_tail_bytes=len(tail),
        warnings=warnings,
    )
