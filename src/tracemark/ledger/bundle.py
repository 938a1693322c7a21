"""Evidence bundles: one canonical zip that a third party verifies offline (docs/formats/evidence-bundle.md)."""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tracemark._util.canonical import canonical_json, sha256_hex
from tracemark._util.files import atomic_write_bytes
from tracemark.errors import (
    ArchiveBoundsError,
    ArchiveError,
    ArchiveFeatureError,
    BundleError,
    FormatVersionError,
    KeyFileError,
    TamperedError,
)
from tracemark.keys import WatermarkKey, decode_key_file, encode_key_file
from tracemark.ledger.audit import attachment_hashes, check_tokens, untimestamped, verify_ledger
from tracemark.ledger.chain import parse_entries, verify_chain
from tracemark.ledger.entries import Entry, parse_json, recanonical, utc_now
from tracemark.ledger.errors import BundleMemberError, KeyRevealError, LineageRevealError, TruncatedLedgerError
from tracemark.ledger.events import KEY_CREATED, LINEAGE_CREATED, MODEL_EMBEDDED, MODEL_PACKAGED, VERIFICATION, lineage_facts
from tracemark.ledger.identity import OwnerIdentity, fingerprint, public_key_hex, public_key_pem, verify_signature
from tracemark.ledger.store import Ledger
from tracemark.ledger.timestamp import TIMESTAMPED
from tracemark.trust.archives import ZipLimits, check_file_size, check_sizes, read_zip
from tracemark.trust.authorities import authority_warnings

if TYPE_CHECKING:
    from tracemark.lineage.fileformat import Lineage

FORMAT = "tracemark-evidence-bundle"
VERSION = 1
DOMAIN = b"tracemark-evidence-bundle/v1\n"
MANIFEST = "MANIFEST.json"
SUMMARY = "SUMMARY.txt"
LEDGER = "ledger.jsonl"
PUBLIC_KEY = "owner.pub.pem"
_MANIFEST_FIELDS = {"format", "version", "created", "ledger_id", "owner_public_key", "head", "members", "sig"}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
BUNDLE_LIMITS = ZipLimits(
    max_archive_bytes=1 << 30, max_members=100_000, max_member_bytes=256 << 20, max_total_bytes=1 << 30,
    methods=frozenset({zipfile.ZIP_STORED}),
)
"""What a bundle may cost: 1 GiB, 100,000 members, 256 MiB each; members stored (the canonical form)."""


# ---------------------------------------------------------------------- canonical zip
def pack(members: dict[str, bytes]) -> bytes:
    """The canonical zip of ``members``: stored (no compression), fixed times and modes, manifest first."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(members, key=lambda n: (n != MANIFEST, n)):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            archive.writestr(info, members[name])
    return buffer.getvalue()


def _safe_name(name: str) -> str:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name or name != path.as_posix():
        raise BundleMemberError(f"unsafe member name {name!r} in the bundle")
    return name


def _read_directory(path: Path) -> dict[str, bytes]:
    files = [(_safe_name(f.relative_to(path).as_posix()), f) for f in sorted(path.rglob("*")) if f.is_file()]
    check_sizes([(name, file.stat().st_size) for name, file in files], BUNDLE_LIMITS, str(path))
    members = {}
    for name, file in files:
        with file.open("rb") as handle:
            members[name] = handle.read(BUNDLE_LIMITS.max_member_bytes + 1)
        check_sizes([(name, len(members[name]))], BUNDLE_LIMITS, str(path))
    return members


def read_members(bundle: str | os.PathLike[str]) -> dict[str, bytes]:
    """Members of a bundle zip (which must be in canonical form) or of an extracted bundle directory.

    Sizes and counts are checked against :data:`BUNDLE_LIMITS` before anything is read
    (:class:`~tracemark.errors.ArchiveBoundsError`); encrypted or compressed members are refused
    (:class:`~tracemark.errors.ArchiveFeatureError`).
    """
    path = Path(bundle)
    if path.is_dir():
        return _read_directory(path)
    if not path.is_file():
        raise BundleError(f"no evidence bundle at {path}")
    check_file_size(path, BUNDLE_LIMITS, "evidence bundle")
    data = path.read_bytes()
    try:
        listed = read_zip(data, BUNDLE_LIMITS, str(path))
    except (ArchiveBoundsError, ArchiveFeatureError):
        raise
    except ArchiveError as exc:
        raise BundleError(f"{exc}; verify the original bundle file") from exc
    members: dict[str, bytes] = {}
    for name, content in listed:
        if _safe_name(name) in members:
            raise BundleMemberError(f"member {name} appears twice")
        members[name] = content
    if pack(members) != data:
        raise BundleError(
            f"{path}: the archive differs from its canonical packing (bytes outside the members were altered, "
            "or it was re-packed); verify the original file, or an extracted directory"
        )
    return members


# ---------------------------------------------------------------------- manifest
def _manifest_signing_bytes(doc: dict[str, Any]) -> bytes:
    return DOMAIN + canonical_json({k: v for k, v in doc.items() if k != "sig"})


def _decode_manifest(data: bytes) -> dict[str, Any]:
    doc = parse_json(data, MANIFEST, BundleMemberError, "a JSON manifest")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BundleMemberError(f"{MANIFEST}: not a tracemark evidence bundle manifest")
    if doc.get("version") != VERSION:
        raise FormatVersionError(f"{MANIFEST}: bundle version {doc.get('version')!r}; this release reads {VERSION}")
    if set(doc) != _MANIFEST_FIELDS or not isinstance(doc["members"], dict) or not isinstance(doc["head"], dict):
        raise BundleMemberError(f"{MANIFEST}: malformed manifest fields")
    if recanonical(lambda: canonical_json(doc), MANIFEST, BundleMemberError) + b"\n" != data:
        raise BundleMemberError(f"{MANIFEST}: not in canonical form; its bytes were altered")
    return doc


# ---------------------------------------------------------------------- report
@dataclass
class BundleReport:
    """What a verified bundle proves. :func:`verify_bundle` raises on any failure."""

    bundle: str
    owner_fingerprint: str
    ledger_id: str
    entries: int
    created: str
    tokens: list[dict[str, Any]]
    keys: list[dict[str, Any]]
    models: list[dict[str, Any]]
    packages: list[dict[str, Any]]
    verifications: list[dict[str, Any]]
    lineages: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return dict(self.__dict__)

    def __str__(self) -> str:
        out = [
            f"Evidence bundle {self.bundle}: all checks passed.",
            f"Owner: Ed25519 key {self.owner_fingerprint} signed every entry of ledger {self.ledger_id}",
            f"  ({self.entries} entries, started {self.created}; the chain is intact and complete up to the signed head).",
            "",
        ]
        out.append("Time-stamps (RFC 3161):" if self.tokens else "Time-stamps: none (dates rest on the owner's own clock).")
        out += [f"  entries {t['first_seq']}–{t['last_seq']}: {t['gen_time']} by {t['authority']} (root sha256 {t['root_fingerprint'][:16]}…)" for t in self.tokens]
        out.append("Watermark keys committed:")
        for k in self.keys:
            reveal = "revealed, commitment and trigger set re-derived and match" if k["revealed"] else "not revealed in this bundle"
            out.append(f"  {k['key_commitment'][:16]}… entry {k['seq']} at {k['time']}, time-stamped {k['timestamped'] or 'NOT YET'}; {reveal}")
        if self.lineages:
            out.append("Lineage fingerprints committed:")
        for f in self.lineages:
            reveal = ("revealed, inputs and answers re-hashed and match" if f["revealed"] else "not revealed in this bundle")
            out.append(f"  {f['lineage_commitment'][:16]}… ({f['n_inputs']} inputs, null rate {f['null_rate']:.3g}) entry {f['seq']} "
                       f"at {f['time']}, time-stamped {f['timestamped'] or 'NOT YET'}; {reveal}")
        for m in self.models:
            out.append(f"Model embedded: sha256 {m['model_sha256'][:16]}… with key {m['key_commitment'][:16]}… (entry {m['seq']}, time-stamped {m['timestamped'] or 'NOT YET'})")
        for p in self.packages:
            out.append(f"Packaged for {p['customer']}: package sha256 {str(p['package_sha256'])[:16]}… (entry {p['seq']}, time-stamped {p['timestamped'] or 'NOT YET'})")
        for v in self.verifications:
            stats = ", ".join(f"{k}={v[k]}" for k in ("matches", "queries", "p_value", "alpha") if v.get(k) is not None)
            out.append(f"Verified {v.get('target')!s}: verdict {v.get('verdict')!s} ({stats}) at {v['time']} (entry {v['seq']}); "
                       f"transcript {'included' if v['transcript'] else 'not recorded'}")
        out += [f"WARNING: {w}" for w in self.warnings]
        return "\n".join(out)


def _timestamp_of(seq: int, tokens: list[dict[str, Any]]) -> str | None:
    return next((t["gen_time"] for t in tokens if t["first_seq"] <= seq <= t["last_seq"]), None)


def _late_commitments(verdict: dict[str, Any], seq: int, committed: dict[str, int]) -> list[str]:
    """Warnings for a verdict's commitments (its key's, or each combined component's) that the ledger did not hold before
    entry ``seq``. A lineage component whose digest the ledger never committed is named too."""
    found = [("key", str(verdict["key_commitment"]))] if verdict.get("key_commitment") is not None else []
    for component in verdict.get("components") or []:
        digest = (component.get("commitment") or {}).get("digest") if isinstance(component, dict) else None
        if isinstance(digest, str) and (digest in committed or component.get("kind") == "lineage"):
            found.append((str(component.get("kind")), digest))
    return [f"verification at entry {seq} uses {kind} commitment {digest[:16]}…, which this ledger did not commit before it"
            for kind, digest in dict.fromkeys(found) if committed.get(digest, seq) >= seq]


def _summarise(
    entries: list[Entry], tokens: list[dict[str, Any]], revealed: set[str], attachments: dict[str, bytes], bundle: str, key: Ed25519PublicKey,
    revealed_lineages: set[str] = frozenset(),  # type: ignore[assignment]
) -> BundleReport:
    warnings = []
    keys = [
        {"seq": e.seq, "time": e.time, "key_commitment": e.payload["key_commitment"], "timestamped": _timestamp_of(e.seq, tokens),
         "revealed": e.payload["key_commitment"] in revealed}
        for e in entries if e.event == KEY_CREATED
    ]
    lineages = [
        {"seq": e.seq, "time": e.time, **e.payload, "timestamped": _timestamp_of(e.seq, tokens),
         "revealed": e.payload["lineage_commitment"] in revealed_lineages}
        for e in entries if e.event == LINEAGE_CREATED
    ]
    committed = {k["key_commitment"]: k["seq"] for k in keys} | {f["lineage_commitment"]: f["seq"] for f in lineages}
    models = [{"seq": e.seq, "time": e.time, **e.payload, "timestamped": _timestamp_of(e.seq, tokens)} for e in entries if e.event == MODEL_EMBEDDED]
    packages = [{"seq": e.seq, "time": e.time, **e.payload, "timestamped": _timestamp_of(e.seq, tokens)} for e in entries if e.event == MODEL_PACKAGED]
    verifications = []
    for e in entries:
        if e.event != VERIFICATION:
            continue
        verdict = parse_json(attachments[e.payload["verdict_sha256"]], f"entry {e.seq}: the verdict attachment", BundleMemberError, "a JSON verdict")
        if not isinstance(verdict, dict) or any(k in verdict and verdict[k] != v for k, v in e.payload.items() if k not in ("target", "verdict_sha256", "transcript_sha256")):
            raise BundleError(f"entry {e.seq}: the attached verdict disagrees with the recorded one")
        warnings += _late_commitments(verdict, e.seq, committed)
        verifications.append({"seq": e.seq, "time": e.time, **verdict, "target": e.payload.get("target"), "transcript": "transcript_sha256" in e.payload})
    pending = untimestamped(entries)
    if pending:
        warnings.append(f"entries {pending[0]}–{pending[-1]} are not covered by a time-stamp")
    for k in keys:
        if not k["revealed"]:
            warnings.append(f"key {k['key_commitment'][:16]}… is committed but not revealed; its triggers cannot be re-checked")
    for f in lineages:
        if not f["revealed"]:
            warnings.append(f"lineage fingerprint {f['lineage_commitment'][:16]}… is committed but not revealed; its inputs cannot be re-asked")
    return BundleReport(
        bundle=bundle, owner_fingerprint=fingerprint(key), ledger_id=str(entries[0].payload["ledger_id"]), entries=len(entries),
        created=entries[0].time, tokens=tokens, keys=keys, models=models, packages=packages, verifications=verifications, lineages=lineages,
        warnings=warnings,
    )


# ---------------------------------------------------------------------- verify
def verify_members(
    members: dict[str, bytes],
    bundle: str = "<bundle>",
    expected_key: Ed25519PublicKey | None = None,
    trusted_roots: list[x509.Certificate] | None = None,
    now: datetime | None = None,
    trust_any_authority: bool = False,
) -> BundleReport:
    """Verify bundle members (see :func:`verify_bundle`)."""
    if MANIFEST not in members:
        raise BundleMemberError(f"{bundle}: no {MANIFEST}; this is not an evidence bundle")
    manifest = _decode_manifest(members[MANIFEST])
    entries, _ = parse_entries(members.get(LEDGER, b""), LEDGER)
    key = verify_chain(entries, expected_key)
    if public_key_hex(key) != manifest["owner_public_key"]:
        raise BundleMemberError(f"{MANIFEST}: names another owner key than the ledger")
    sig = str(manifest["sig"])
    if len(sig) != 128 or sig.strip("0123456789abcdef"):
        raise BundleMemberError(f"{MANIFEST}: the signature is not 64 bytes of lower-case hex")
    verify_signature(key, bytes.fromhex(sig), _manifest_signing_bytes(manifest), MANIFEST)
    head = manifest["head"]
    if (entries[-1].seq, entries[-1].hash) != (head.get("seq"), head.get("hash")):
        raise TruncatedLedgerError(f"{LEDGER} ends at entry {entries[-1].seq} but the signed manifest says {head.get('seq')}")
    listed = dict(manifest["members"])
    if set(listed) != set(members) - {MANIFEST}:
        extra, missing = set(members) - {MANIFEST} - set(listed), set(listed) - set(members)
        raise BundleMemberError(f"{bundle}: members differ from the manifest (missing {sorted(missing)}, unexpected {sorted(extra)})")
    for name, digest in sorted(listed.items()):
        if sha256_hex(members[name]) != digest:
            raise BundleMemberError(f"{bundle}: member {name} differs from the manifest; it was altered")
    if public_key_pem(key) != members.get(PUBLIC_KEY):
        raise BundleMemberError(f"{PUBLIC_KEY} is not the ledger owner's key")
    token_results = check_tokens(entries, members.get, trusted_roots, now=now)
    tokens = [{"first_seq": t["first_seq"], "last_seq": t["last_seq"], **t["info"].to_dict()} for t in token_results]
    attachments: dict[str, bytes] = {}
    for entry in entries:
        for digest in attachment_hashes(entry):
            data = members.get(f"attachments/{digest}")
            if data is None:
                raise BundleMemberError(f"entry {entry.seq} refers to attachment {digest[:16]}…, which the bundle lacks")
            attachments[digest] = data
    revealed = _check_reveals(members, entries)
    revealed_lineages = _check_lineage_reveals(members, entries)
    authority = authority_warnings(len(token_results), trusted_roots, trust_any_authority)  # after every integrity check
    report = _summarise(entries, tokens, revealed, attachments, bundle, key, revealed_lineages)
    report.warnings += [f"the time-stamp authority certificate for entries {t['first_seq']}–{t['last_seq']} has expired since (the token stays valid)"
                        for t in tokens if t["authority_cert_expired_now"]]
    report.warnings += authority
    return report


def _check_reveals(members: dict[str, bytes], entries: list[Entry]) -> set[str]:
    created = {e.payload["key_commitment"]: e for e in entries if e.event == KEY_CREATED}
    revealed = set()
    for name in sorted(n for n in members if n.startswith("keys/")):
        try:
            key = decode_key_file(members[name], None, name)
        except (KeyFileError, TamperedError) as exc:
            raise KeyRevealError(f"{name}: the revealed key cannot be read ({exc})") from exc
        entry = created.get(key.commitment())
        if entry is None:
            raise KeyRevealError(f"{name}: the revealed key's commitment {key.commitment()[:16]}… is not committed in the ledger")
        if key.triggers().sha256() != entry.payload.get("trigger_sha256"):
            raise KeyRevealError(f"{name}: the key regenerates a different trigger set than was committed in entry {entry.seq}")
        revealed.add(key.commitment())
    return revealed


def _differing_facts(entry: Entry, lineage: "Lineage") -> str:
    """The recorded facts a lineage file disagrees with its ``lineage-created`` entry on, as one line ('' if none)."""
    differ = [name for name, value in lineage_facts(lineage).items() if entry.payload.get(name) != value]
    return f"{', '.join(differ)} differ from what entry {entry.seq} committed" if differ else ""


def _check_lineage_reveals(members: dict[str, bytes], entries: list[Entry]) -> set[str]:
    """Each ``lineages/<commitment>.lineage`` member: a bounded, well-formed lineage file whose inputs and answers hash to
    its name and to a ``lineage-created`` entry, and whose recorded facts agree with that entry."""
    names = sorted(n for n in members if n.startswith("lineages/"))
    if not names:
        return set()
    from tracemark.errors import TracemarkError
    from tracemark.lineage.fileformat import decode

    created = {e.payload["lineage_commitment"]: e for e in entries if e.event == LINEAGE_CREATED}
    revealed = set()
    for name in names:
        try:
            lineage = decode(members[name], name)
        except TracemarkError as exc:
            raise LineageRevealError(f"{name}: the revealed lineage file cannot be read ({exc})") from exc
        digest = lineage.commitment()
        if name != f"lineages/{digest}.lineage":
            raise LineageRevealError(f"{name}: the file's commitment is {digest[:16]}…, not the one its name gives")
        entry = created.get(digest)
        if entry is None:
            raise LineageRevealError(f"{name}: the revealed lineage's commitment {digest[:16]}… is not committed in the ledger")
        differ = _differing_facts(entry, lineage)
        if differ:
            raise LineageRevealError(f"{name}: {differ}")
        revealed.add(digest)
    return revealed


def verify_bundle(
    bundle: str | os.PathLike[str],
    expected_key: Ed25519PublicKey | None = None,
    trusted_roots: list[x509.Certificate] | None = None,
    now: datetime | None = None,
    trust_any_authority: bool = False,
) -> BundleReport:
    """Verify an evidence bundle (zip or extracted directory) offline; raise a named error on any failure.

    Checks: canonical archive, signed manifest and every member hash, the whole hash chain and
    every entry signature, the signed head (no truncation), every RFC 3161 token (imprint,
    Merkle root, signature, authority chain), attachments, and each revealed key against its
    commitment and trigger-set hash, each revealed lineage fingerprint against its commitment and recorded facts.
    ``expected_key`` pins the owner; ``trusted_roots`` pins the
    time-stamp authority, without which a bundle holding tokens is refused
    (:class:`~tracemark.ledger.errors.UnpinnedAuthorityError`) unless ``trust_any_authority``.
    """
    return verify_members(read_members(bundle), str(bundle), expected_key, trusted_roots, now, trust_any_authority)


# ---------------------------------------------------------------------- export
def export_bundle(
    ledger_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    owner: OwnerIdentity,
    keys: list[WatermarkKey] = (),  # type: ignore[assignment]
    upto: int | None = None,
    lineages: Sequence["Lineage"] = (),
) -> BundleReport:
    """Write an evidence bundle of the ledger (entries 0..``upto``, default all) and return its verification.

    ``keys`` are revealed (stored unencrypted): each must be committed by a ``key-created`` entry.
    ``lineages`` (lineage fingerprints, :class:`~tracemark.lineage.Lineage`) are revealed too, so a verifier can
    re-ask a suspect their inputs: each must be committed by a ``lineage-created`` entry.
    """
    verify_ledger(ledger_dir, expected_key=owner.public_key, trust_any_authority=True)  # the owner's own tokens; a recipient pins the authority
    ledger = Ledger.open(ledger_dir)
    entries, _ = ledger.read(allow_torn_tail=True)
    if upto is not None:
        if not 0 <= upto < len(entries):
            raise BundleError(f"--upto {upto} is outside the ledger (entries 0–{len(entries) - 1})")
        entries = entries[: upto + 1]
    members = {LEDGER: b"".join(e.encode() for e in entries), PUBLIC_KEY: public_key_pem(owner.public_key)}
    for entry in entries:
        if entry.event == TIMESTAMPED:
            name = str(entry.payload["record"])
            members[name] = (ledger.directory / name).read_bytes()
        for digest in attachment_hashes(entry):
            path = ledger.attachment_path(digest)
            if not path.is_file():
                raise BundleError(f"entry {entry.seq}: attachment {path} is missing; restore it before exporting")
            members[f"attachments/{digest}"] = path.read_bytes()
    committed = {e.payload["key_commitment"] for e in entries if e.event == KEY_CREATED}
    for key in keys:
        if key.commitment() not in committed:
            raise KeyRevealError(f"key {key.commitment()[:16]}… is not committed in the exported entries; record it first")
        members[f"keys/{key.commitment()}.json"] = encode_key_file(key, None)
    committed_lineages = {e.payload["lineage_commitment"]: e for e in entries if e.event == LINEAGE_CREATED}
    for lineage in lineages:
        entry = committed_lineages.get(lineage.commitment())
        if entry is None:
            raise LineageRevealError(f"lineage {lineage.commitment()[:16]}… is not committed in the exported entries; "
                                     "record it first (tracemark lineage new --ledger)")
        differ = _differing_facts(entry, lineage)
        if differ:
            raise LineageRevealError(f"lineage {lineage.commitment()[:16]}…: {differ}")
        members[f"lineages/{lineage.commitment()}.lineage"] = lineage.encode()
    preliminary = verify_members(_signed(members, entries, owner, "")[0], str(out), trust_any_authority=True)  # the owner's own tokens
    members[SUMMARY] = (str(preliminary).replace(str(out), Path(out).name) + "\n").encode("utf-8")
    members, _ = _signed(members, entries, owner, utc_now())
    atomic_write_bytes(out, pack(members), mode=0o600 if keys or lineages else 0o644)
    return verify_bundle(out, expected_key=owner.public_key, trust_any_authority=True)


def _signed(members: dict[str, bytes], entries: list[Entry], owner: OwnerIdentity, created: str) -> tuple[dict[str, bytes], dict[str, Any]]:
    members = {k: v for k, v in members.items() if k != MANIFEST}
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "created": created,
        "ledger_id": str(entries[0].payload["ledger_id"]),
        "owner_public_key": public_key_hex(owner.public_key),
        "head": {"seq": entries[-1].seq, "hash": entries[-1].hash},
        "members": {name: sha256_hex(data) for name, data in sorted(members.items())},
    }
    doc["sig"] = owner.sign(_manifest_signing_bytes(doc)).hex()
    members[MANIFEST] = canonical_json(doc) + b"\n"
    return members, doc
