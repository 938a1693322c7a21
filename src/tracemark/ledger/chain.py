"""Reading a ledger file and checking its hash chain, signatures and signed head."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tracemark._util.canonical import canonical_json
from tracemark.errors import FormatVersionError, SignatureError
from tracemark.ledger.entries import GENESIS_PREV, Entry, decode_entry, parse_json, recanonical
from tracemark.ledger.errors import HeadError, RollbackError, SequenceError, TornTailError, TruncatedLedgerError
from tracemark.ledger.identity import OwnerIdentity, fingerprint, public_key_from_hex, public_key_hex, verify_signature
from tracemark.ledger.schema import check_payload

GENESIS_EVENT = "ledger-created"
HEAD_FORMAT = "tracemark-ledger-head"
HEAD_VERSION = 1
HEAD_DOMAIN = b"tracemark-ledger-head/v1\n"


def split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines (without newline) and the torn tail after the last newline (``b""`` if none)."""
    cut = data.rfind(b"\n") + 1
    lines = data[:cut].split(b"\n")[:-1] if cut else []
    return lines, data[cut:]


def parse_entries(data: bytes, where: str, allow_torn_tail: bool = False) -> tuple[list[Entry], bytes]:
    """Decode every complete line. A torn tail raises :class:`TornTailError` unless allowed."""
    lines, tail = split_lines(data)
    if tail and not allow_torn_tail:
        raise TornTailError(
            f"{where}: ends in {len(tail)} bytes of an incomplete entry (an append was interrupted); "
            "`tracemark ledger verify` reports it and the next append records its removal"
        )
    return [decode_entry(line, f"{where} line {i + 1}") for i, line in enumerate(lines)], tail


def owner_key(genesis: Entry) -> Ed25519PublicKey:
    """The owner public key declared by a ledger's first entry."""
    if genesis.seq != 0 or genesis.event != GENESIS_EVENT or genesis.prev != GENESIS_PREV:
        raise SequenceError(f"the first entry must be #0 {GENESIS_EVENT!r}; found #{genesis.seq} {genesis.event!r}")
    key = public_key_from_hex(str(genesis.payload.get("owner_public_key", "")))
    if fingerprint(key) != genesis.owner:
        raise SignatureError("entry 0: the declared owner key does not match the owner fingerprint")
    return key


def verify_chain(entries: list[Entry], expected_key: Ed25519PublicKey | None = None) -> Ed25519PublicKey:
    """Check order, links, hashes and signatures from the start; return the owner's public key.

    ``expected_key`` pins the owner (else the key declared in entry 0 is used and returned).
    """
    if not entries:
        raise TruncatedLedgerError("the ledger has no entries; it was emptied or never initialised")
    key = owner_key(entries[0])
    if expected_key is not None and public_key_hex(expected_key) != public_key_hex(key):
        raise SignatureError("the ledger was created by a different owner key than the one given")
    prev = GENESIS_PREV
    for index, entry in enumerate(entries):
        if entry.seq != index:
            raise SequenceError(f"entry at position {index} has sequence number {entry.seq}: entries were dropped or reordered")
        if entry.prev != prev:
            raise SequenceError(f"entry {entry.seq} does not link to the entry before it: an entry was dropped, replaced or reordered")
        if entry.owner != entries[0].owner:
            raise SignatureError(f"entry {entry.seq} names another owner than the ledger's")
        entry.check(key)
        check_payload(entry.seq, entry.event, entry.payload)
        prev = entry.hash
    return key


@dataclass(frozen=True)
class Head:
    """The owner-signed pointer to the last entry; catches entries cut off the end."""

    ledger_id: str
    seq: int
    hash: str
    sig: str

    def signing_bytes(self) -> bytes:
        """Domain + canonical JSON of the signed fields."""
        return HEAD_DOMAIN + canonical_json(self._signed())

    def _signed(self) -> dict:
        return {"format": HEAD_FORMAT, "version": HEAD_VERSION, "ledger_id": self.ledger_id, "seq": self.seq, "hash": self.hash}

    def encode(self) -> bytes:
        """File bytes: canonical JSON and a newline."""
        return canonical_json({**self._signed(), "sig": self.sig}) + b"\n"

    def to_dict(self) -> dict:
        """JSON-able form."""
        return {"ledger_id": self.ledger_id, "seq": self.seq, "hash": self.hash}


def make_head(owner: OwnerIdentity, ledger_id: str, last: Entry) -> Head:
    """Sign a head pointing at ``last``."""
    unsigned = Head(ledger_id, last.seq, last.hash, "")
    return Head(ledger_id, last.seq, last.hash, owner.sign(unsigned.signing_bytes()).hex())


def decode_head(data: bytes, where: str) -> Head:
    """Parse head bytes (canonical form required). Raises :class:`HeadError` or FormatVersionError."""
    doc = parse_json(data, where, HeadError, "a ledger head")
    if not isinstance(doc, dict) or doc.get("format") != HEAD_FORMAT:
        raise HeadError(f"{where}: not a tracemark ledger head")
    if doc.get("version") != HEAD_VERSION:
        raise FormatVersionError(f"{where}: head version {doc.get('version')!r}; this release reads {HEAD_VERSION}")
    try:
        head = Head(str(doc["ledger_id"]), doc["seq"], str(doc["hash"]), str(doc["sig"]))
        if type(head.seq) is not int or set(doc) != {"format", "version", "ledger_id", "seq", "hash", "sig"}:
            raise ValueError("wrong fields")
        if bytes.fromhex(head.sig).hex() != head.sig:
            raise ValueError("signature is not lower-case hex")
    except (KeyError, ValueError) as exc:
        raise HeadError(f"{where}: malformed head ({exc})") from exc
    if recanonical(head.encode, where, HeadError) != data:
        raise HeadError(f"{where}: head is not in canonical form; its bytes were altered")
    return head


def check_signature(head: Head, key: Ed25519PublicKey) -> None:
    """Raise :class:`SignatureError` unless ``head`` is signed by ``key``."""
    verify_signature(key, bytes.fromhex(head.sig), head.signing_bytes(), "ledger head")


def check_head(head: Head, entries: list[Entry], key: Ed25519PublicKey) -> None:
    """Raise unless ``head`` is the owner's and the ledger reaches (at least) the entry it names."""
    check_signature(head, key)
    if head.ledger_id != entries[0].payload.get("ledger_id"):
        raise HeadError("the head belongs to another ledger")
    if head.seq >= len(entries):
        raise TruncatedLedgerError(
            f"the signed head names entry {head.seq} but the ledger ends at entry {len(entries) - 1}: "
            f"{head.seq - len(entries) + 1} entries were cut off the end"
        )
    if entries[head.seq].hash != head.hash:
        raise HeadError(f"the signed head's hash for entry {head.seq} differs from the ledger's: the ledger was rewritten")


def check_seen(entries: list[Entry], seen: list[tuple[int, str]], source: str) -> None:
    """Raise :class:`RollbackError` unless every ``(seq, hash)`` a witness saw is still in ``entries``."""
    for seq, digest in seen:
        if seq >= len(entries):
            raise RollbackError(
                f"{source} saw entry {seq}, but the ledger ends at entry {len(entries) - 1}: entries were cut off and an older "
                "head restored (a rollback); recover the ledger from a copy that has them"
            )
        if entries[seq].hash != digest:
            raise RollbackError(f"{source} saw a different entry {seq} than the ledger has: the ledger was rolled back and rewritten")
