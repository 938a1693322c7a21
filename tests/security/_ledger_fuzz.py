"""Mutation fuzzing of ledgers and evidence bundles through the real verify path (used by tests and bench/fuzz_ledger.py).

Outcomes of one mutation:

- ``rejected``: verify raised a named :class:`TracemarkError` subclass;
- ``benign``: verify passed and what it verified equals the original (the mutation touched no
  meaningful byte, e.g. bytes after the last newline: a torn tail);
- ``accepted``: verify passed with content that differs from the original -- a failure;
- ``bare``: verify raised the base ``TracemarkError`` itself -- a failure (unnamed);
- ``tracebacks``: any other exception -- a failure.

Structure-aware mode (:func:`fuzz_resigned`) edits payloads, token records, verdicts and key
reveals, then re-signs the whole chain and manifest with a stranger's key, so the signatures
hold and the schema checks are what stands between hostile content and the verifier.
"""

from __future__ import annotations

import json
import random
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracemark._util.canonical import canonical_json, sha256_hex
from tracemark.errors import TracemarkError
from tracemark.ledger import OwnerIdentity, verify_bundle, verify_ledger
from tracemark.ledger.bundle import LEDGER, MANIFEST, PUBLIC_KEY, _signed, pack, read_members
from tracemark.ledger.chain import parse_entries
from tracemark.ledger.entries import DOMAIN, Entry
from tracemark.ledger.identity import public_key_hex, public_key_pem


@dataclass
class Counts:
    """Outcome counts of a fuzz run, and the first few failures."""

    total: int = 0
    rejected: int = 0
    benign: int = 0
    accepted: int = 0
    bare: int = 0
    tracebacks: int = 0
    failures: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def record(self, outcome: str, detail: str = "", error: str = "") -> None:
        self.total += 1
        if error:
            self.errors[error] += 1
        setattr(self, outcome, getattr(self, outcome) + 1)
        if outcome in ("accepted", "bare", "tracebacks") and len(self.failures) < 5:
            self.failures.append(f"{outcome}: {detail}")

    @property
    def ok(self) -> bool:
        return self.accepted == self.bare == self.tracebacks == 0

    def __str__(self) -> str:
        return (f"{self.total} mutations: {self.rejected} rejected with a named error, {self.benign} benign, "
                f"{self.accepted} accepted, {self.bare} unnamed errors, {self.tracebacks} tracebacks")


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random change: flip 1-3 bytes, truncate, insert, delete or duplicate a span."""
    kind = rng.choice(("flip", "flip", "flip", "truncate", "insert", "delete", "duplicate"))
    pos = rng.randrange(len(data))
    if kind == "flip":
        out = bytearray(data)
        for p in {pos, *(rng.randrange(len(data)) for _ in range(rng.randrange(3)))}:
            out[p] ^= rng.randrange(1, 256)
        return bytes(out)
    span = rng.randrange(1, 64)
    if kind == "truncate":
        return data[:pos]
    if kind == "insert":
        return data[:pos] + bytes(rng.randrange(256) for _ in range(span)) + data[pos:]
    if kind == "delete":
        return data[:pos] + data[pos + span :]
    return data[:pos] + data[pos : pos + span] + data[pos:]


def _judge(counts: Counts, run: Callable[[], Any], original: Any, what: str) -> None:
    try:
        result = run()
    except TracemarkError as exc:
        counts.record("bare" if type(exc) is TracemarkError else "rejected", f"{what}: {exc}", type(exc).__name__)
        return
    except Exception:  # noqa: BLE001 - counting every escape is the point
        counts.record("tracebacks", f"{what}: {traceback.format_exc(limit=-3)}")
        return
    counts.record("benign" if result == original else "accepted", what)


def _ledger_content(directory: Path) -> Any:
    report = verify_ledger(directory, trust_any_authority=True).to_dict()  # the fuzz tests parsing; authority pinning has its own test
    from tracemark.ledger import Ledger

    entries, _ = Ledger.open(directory).read(allow_torn_tail=True)
    keep = ("ledger_id", "owner_fingerprint", "entries", "events", "tokens", "untimestamped")
    return {k: report[k] for k in keep}, [e.encode() for e in entries]


def fuzz_ledger(directory: Path, n: int, rng: random.Random) -> Counts:
    """``n`` mutations of ledger.jsonl, head.json and a token record, each checked with verify_ledger."""
    original = _ledger_content(directory)
    targets = [directory / "ledger.jsonl", directory / "head.json", *sorted((directory / "tokens").glob("*.json"))]
    counts = Counts()
    for i in range(n):
        path = targets[i % len(targets)]
        data = path.read_bytes()
        path.write_bytes(mutate(data, rng))
        try:
            _judge(counts, lambda: _ledger_content(directory), original, f"{path.name} #{i}")
        finally:
            path.write_bytes(data)
    return counts


def _bundle_content(bundle: Path) -> Any:
    report = verify_bundle(bundle, trust_any_authority=True).to_dict()
    report.pop("bundle")
    return report


def fuzz_bundle(bundle: Path, n: int, rng: random.Random) -> Counts:
    """``n`` mutations, each checked with verify_bundle: half of the zip's bytes, half of one member re-packed canonically."""
    data = bundle.read_bytes()
    members = read_members(bundle)
    names = sorted(members)
    original = _bundle_content(bundle)
    counts = Counts()
    target = bundle.with_name(f"fuzzed-{bundle.name}")
    for i in range(n):
        if i % 2:
            name = names[(i // 2) % len(names)]
            target.write_bytes(pack({**members, name: mutate(members[name], rng)}))
            what = f"member {name} #{i}"
        else:
            target.write_bytes(mutate(data, rng))
            what = f"zip bytes #{i}"
        _judge(counts, lambda: _bundle_content(target), original, what)
    return counts


# ---------------------------------------------------------------------- re-signed (structure-aware)
def random_json(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value of any type (strings of odd lengths and characters, big and negative numbers)."""
    kind = rng.randrange(9 if depth < 2 else 6)
    return [
        lambda: None, lambda: rng.choice((True, False)), lambda: rng.randrange(-(1 << 70), 1 << 70),
        lambda: rng.uniform(-1e300, 1e300), lambda: "".join(rng.choice("af09/.\\é\x00 ") for _ in range(rng.choice((0, 1, 16, 64, 5000)))),
        lambda: "0" * rng.choice((63, 64, 65)), lambda: [random_json(rng, depth + 1) for _ in range(rng.randrange(4))],
        lambda: {str(rng.randrange(5)): random_json(rng, depth + 1) for _ in range(rng.randrange(4))}, lambda: "tokens/../../etc/passwd",
    ][kind]()


def resign(members: dict[str, bytes], docs: list[dict[str, Any]], owner: OwnerIdentity) -> bytes:
    """Re-sign entry documents (any payloads) and the manifest with ``owner``; return the canonical bundle bytes."""
    entries: list[Entry] = []
    prev = "0" * 64
    for i, doc in enumerate(docs):
        payload = doc["payload"]
        if i == 0 and isinstance(payload, dict):
            payload = {**payload, "owner_public_key": public_key_hex(owner.public_key)}
        fields = {"format": doc["format"], "version": doc["version"], "seq": doc["seq"], "time": doc["time"], "event": doc["event"],
                  "payload": payload, "prev": prev, "owner": owner.fingerprint()}
        data = DOMAIN + canonical_json(fields)
        entries.append(Entry(doc["seq"], doc["time"], doc["event"], payload, prev, owner.fingerprint(), sha256_hex(data), owner.sign(data).hex()))
        prev = entries[-1].hash
    members = {**members, LEDGER: b"".join(e.encode() for e in entries), PUBLIC_KEY: public_key_pem(owner.public_key)}
    signed, _ = _signed(members, entries, owner, "2025-01-01T00:00:00.000000Z")
    return pack(signed)


def _mutate_structure(members: dict[str, bytes], docs: list[dict[str, Any]], rng: random.Random) -> str:
    """Change one thing (a payload field, a token record field, a verdict, a key reveal) and fix the hashes that name it."""
    choice = rng.randrange(4)
    if choice == 0:  # a payload field: replaced, removed or added
        doc = rng.choice(docs[1:])
        payload = doc["payload"]
        name = rng.choice(sorted(payload) + ["extra"])
        if rng.random() < 0.2 and name in payload:
            del payload[name]
        else:
            payload[name] = random_json(rng)
        return f"entry {doc['seq']} payload {name}"
    names = sorted(members)
    if choice == 1:  # a token record field, re-hashed into its entry
        records = [d for d in docs if d["event"] == "timestamped"]
        if records:
            doc = rng.choice(records)
            record = json.loads(members[doc["payload"]["record"]])
            name = rng.choice(sorted(record))
            record[name] = random_json(rng)
            data = canonical_json(record) + b"\n"
            members[doc["payload"]["record"]] = data
            doc["payload"]["record_sha256"] = sha256_hex(data)
            return f"token record {name}"
    if choice == 2:  # a verdict attachment, re-hashed into its entry
        verifications = [d for d in docs if d["event"] == "verification"]
        if verifications:
            doc = rng.choice(verifications)
            data = canonical_json(random_json(rng)) if rng.random() < 0.7 else mutate(members[f"attachments/{doc['payload']['verdict_sha256']}"], rng)
            members.pop(f"attachments/{doc['payload']['verdict_sha256']}")
            doc["payload"]["verdict_sha256"] = sha256_hex(data)
            members[f"attachments/{sha256_hex(data)}"] = data
            return "verdict attachment"
    keys = [n for n in names if n.startswith("keys/")]
    if keys:
        name = rng.choice(keys)
        members[name] = mutate(members[name], rng)
        return f"key reveal {name}"
    return "nothing"


def fuzz_resigned(bundle: Path, n: int, rng: random.Random) -> Counts:
    """``n`` structural edits of a bundle, re-signed by a stranger; only named errors or a clean pass are allowed.

    ``accepted`` is not counted here (the stranger's bundle may be valid: it is their own);
    a pass is recorded as ``benign``.
    """
    base = read_members(bundle)
    stranger = OwnerIdentity.generate()
    entries, _ = parse_entries(base[LEDGER], LEDGER)
    counts = Counts()
    target = bundle.with_name(f"resigned-{bundle.name}")
    for i in range(n):
        members = {k: v for k, v in base.items() if k != MANIFEST}
        docs = [json.loads(json.dumps(e.to_dict())) for e in entries]
        if i % 2:  # re-signed entries no longer match the tokens' leaves: drop tokens so later checks are reached
            docs = [{**d, "seq": seq} for seq, d in enumerate(d for d in docs if d["event"] != "timestamped")]
            members = {k: v for k, v in members.items() if not k.startswith("tokens/")}
        what = _mutate_structure(members, docs, rng)
        try:
            target.write_bytes(resign(members, docs, stranger))
        except (TypeError, ValueError) as exc:  # the mutation cannot be signed as JSON (e.g. an over-long float)
            counts.record("rejected", f"unsignable: {exc}")
            continue
        _judge(counts, lambda: (verify_bundle(target, trust_any_authority=True), None)[1], None, f"#{i} {what}")
    return counts
