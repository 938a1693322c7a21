"""Rollback detection: what witnesses of a ledger saw, compared with the ledger as it is now.

Cutting entries off the end and restoring an older (genuine, signed) ``head.json`` leaves a
ledger that is internally consistent. Anything that recorded a later state betrays it:

- a time-stamp token record left in ``tokens/`` that the chain no longer refers to, if the
  authority's signature over it verifies;
- a file given with ``--witness``: an exported evidence bundle, a copy of ``head.json``, or a
  copy of a token record;
- the store's high-water mark, kept outside the ledger (:func:`tracemark.ledger.store.check_mark`).

A witness that names an entry past the end, or another hash for an entry, raises
:class:`~tracemark.ledger.errors.RollbackError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tracemark.errors import TracemarkError
from tracemark.ledger.chain import HEAD_FORMAT, check_seen, check_signature, decode_head, parse_entries
from tracemark.ledger.entries import Entry, parse_json
from tracemark.ledger.errors import ImprintMismatchError, WitnessError
from tracemark.ledger.merkle import merkle_root
from tracemark.ledger.timestamp import RECORD_FORMAT, TokenRecord, decode_record, verify_token

MAX_WITNESS_JSON = 1 << 20
"""Largest head or token-record file read as a witness (1 MiB)."""


@dataclass(frozen=True)
class Witness:
    """Entries some record outside the current ledger saw: ``(seq, hash)`` pairs, and where it came from."""

    source: str
    seen: tuple[tuple[int, str], ...]

    def check(self, entries: list[Entry]) -> None:
        """Raise :class:`RollbackError` unless the ledger still has every entry this witness saw."""
        check_seen(entries, list(self.seen), self.source)


def token_witness(record: TokenRecord, ledger_id: str, trusted_roots: list[x509.Certificate] | None, source: str) -> Witness:
    """The entries a token record covers, once its authority signature and Merkle root verify on their own."""
    if record.ledger_id != ledger_id:
        raise WitnessError(f"{source} time-stamps another ledger ({record.ledger_id[:32]})")
    if len(record.leaves) != record.last_seq - record.first_seq + 1 or merkle_root(record.leaves) != record.root:
        raise ImprintMismatchError(f"{source}: its leaves do not match its Merkle root or range")
    verify_token(record.response, record.message(), record.certificates(), trusted_roots)
    return Witness(source, tuple((record.first_seq + i, leaf) for i, leaf in enumerate(record.leaves)))


def stray_token_witnesses(
    tokens_dir: Path, referenced: set[str], ledger_id: str, trusted_roots: list[x509.Certificate] | None
) -> tuple[list[Witness], list[str]]:
    """Witnesses from token records in ``tokens/`` that the chain does not refer to, and warnings for those that prove nothing."""
    witnesses, warnings = [], []
    if not tokens_dir.is_dir():
        return witnesses, warnings
    for path in sorted(p for p in tokens_dir.iterdir() if p.suffix == ".json" and f"tokens/{p.name}" not in referenced):
        source = f"the time-stamp token {path.name} (left in tokens/, no longer in the chain)"
        try:
            witnesses.append(token_witness(decode_record(_read_small(path), path.name), ledger_id, trusted_roots, source))
            warnings.append(f"{path.name} is not recorded in the chain (time-stamping was interrupted)")
        except TracemarkError:
            warnings.append(f"{path.name} is not recorded in the chain and does not verify as a token of this ledger; it proves nothing")
    return witnesses, warnings


def _starts_with_zip_magic(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == b"PK"


def _read_small(path: Path) -> bytes:
    with path.open("rb") as handle:
        data = handle.read(MAX_WITNESS_JSON + 1)
    if len(data) > MAX_WITNESS_JSON:
        raise WitnessError(f"{path}: over {MAX_WITNESS_JSON:,} bytes; not a head or token record")
    return data


def load_witness(
    path: str | os.PathLike[str], key: Ed25519PublicKey, ledger_id: str, trusted_roots: list[x509.Certificate] | None
) -> Witness:
    """A ``--witness`` file: an evidence bundle (zip or directory), a saved ``head.json``, or a token record.

    Bundles and heads must be signed by ``key`` (the ledger's owner); tokens must verify.
    Raises :class:`WitnessError` when the file cannot serve as a witness of this ledger.
    """
    from tracemark.ledger.bundle import LEDGER, read_members, verify_members  # bundle builds on audit, which uses this module

    file = Path(path)
    try:
        if file.is_dir() or (file.is_file() and _starts_with_zip_magic(file)):
            members = read_members(file)
            # the owner's signature on the head is what witnesses; its tokens need no pinned authority for that
            report = verify_members(members, str(file), expected_key=key, trusted_roots=trusted_roots, trust_any_authority=True)
            if report.ledger_id != ledger_id:
                raise WitnessError(f"the bundle {file} is of another ledger ({report.ledger_id})")
            entries, _ = parse_entries(members[LEDGER], f"{file}:{LEDGER}")
            return Witness(f"the evidence bundle {file}", tuple((e.seq, e.hash) for e in entries))
        if not file.is_file():
            raise WitnessError(f"no witness file at {file}; give an exported bundle, a saved head.json or a token record")
        data = _read_small(file)
        kind = parse_json(data, str(file), WitnessError, "a bundle, head or token record")
        kind = kind.get("format") if isinstance(kind, dict) else None
        if kind == HEAD_FORMAT:
            head = decode_head(data, str(file))
            check_signature(head, key)
            if head.ledger_id != ledger_id:
                raise WitnessError(f"the head {file} is of another ledger ({head.ledger_id[:32]})")
            return Witness(f"the saved head {file}", ((head.seq, head.hash),))
        if kind == RECORD_FORMAT:
            return token_witness(decode_record(data, str(file)), ledger_id, trusted_roots, f"the time-stamp token {file}")
        raise WitnessError(f"{file} is not an evidence bundle, a ledger head or a token record")
    except WitnessError:
        raise
    except TracemarkError as exc:
        raise WitnessError(f"--witness {file} cannot be used: {type(exc).__name__}: {exc}") from exc
