"""RFC 3161 time-stamps: request a token for pending ledger entries, store it, verify it.

ASN.1 and CMS are handled by ``rfc3161-client``; this module adds the HTTP exchange, the
binding of a token to a range of entries (a Merkle root), the token record file
(docs/formats/ledger.md) and readable, named failures.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from rfc3161_client import (
    HashAlgorithm,
    PKIStatus,
    TimestampRequestBuilder,
    VerificationError,
    VerifierBuilder,
    decode_timestamp_response,
)

from tracemark._util.canonical import canonical_json, sha256_hex
from tracemark._util.files import atomic_write_bytes
from tracemark.errors import FormatVersionError, LedgerError, TimestampError
from tracemark.ledger.entries import Entry, parse_json, recanonical
from tracemark.ledger.errors import (
    AuthorityCertificateExpiredError,
    ImprintMismatchError,
    TokenTamperedError,
    UntrustedAuthorityError,
)
from tracemark.ledger.merkle import merkle_root
from tracemark.ledger.store import Ledger

RECORD_FORMAT = "tracemark-timestamp"
RECORD_VERSION = 1
MESSAGE_DOMAIN = b"tracemark-ledger-timestamp/v1\n"
TIMESTAMPED = "timestamped"
_DIGESTS = {"2.16.840.1.101.3.4.2.1": hashlib.sha256, "2.16.840.1.101.3.4.2.2": hashlib.sha384, "2.16.840.1.101.3.4.2.3": hashlib.sha512}
_RECORD_FIELDS = {"format", "version", "ledger_id", "first_seq", "last_seq", "leaves", "root", "tsa_url", "response", "chain"}


def load_certificates(pem: bytes, where: str) -> list[x509.Certificate]:
    """All certificates in a PEM blob; raises :class:`TimestampError` if there are none."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise TimestampError(f"{where}: not a PEM certificate chain ({exc})") from exc
    return certs


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def cert_fingerprint(cert: x509.Certificate) -> str:
    """Hex SHA-256 of a certificate's DER."""
    return cert.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True)
class TokenInfo:
    """What a verified token says: when, by which authority, under which root."""

    gen_time: str
    serial: int
    policy: str
    authority: str
    root: str
    root_fingerprint: str
    authority_cert_expired_now: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return dict(self.__dict__)

    def __str__(self) -> str:
        note = " (authority certificate has expired since; the token stays valid)" if self.authority_cert_expired_now else ""
        return f"time-stamped {self.gen_time} by {self.authority} (root {self.root}, sha256 {self.root_fingerprint[:16]}…){note}"


def verify_token(
    response_der: bytes,
    message: bytes,
    chain: list[x509.Certificate],
    trusted_roots: list[x509.Certificate] | None = None,
    nonce: int | None = None,
    now: datetime | None = None,
) -> TokenInfo:
    """Verify an RFC 3161 response over ``message``: status, imprint, authority certificate and signature.

    ``chain`` holds the authority's certificates (leaf, intermediates, root). Without
    ``trusted_roots`` its self-signed certificates are the roots, so the check proves
    consistency and the returned root fingerprint must be compared with a known one;
    with ``trusted_roots`` the token must chain to one of those.
    """
    try:
        response = decode_timestamp_response(response_der)
    except ValueError as exc:
        raise TimestampError(
            f"cannot parse the time-stamp reply ({exc}); if the authority embeds its whole chain, "
            "configure it to send only its signing certificate"
        ) from exc
    if PKIStatus(response.status) not in (PKIStatus.GRANTED, PKIStatus.GRANTED_WITH_MODS):
        raise TimestampError(f"the authority refused the request: status {response.status} {response.status_string}")
    info = response.tst_info
    digest = _DIGESTS.get(info.message_imprint.hash_algorithm.dotted_string)
    if digest is None:
        raise TimestampError(f"unsupported imprint hash algorithm {info.message_imprint.hash_algorithm.dotted_string}")
    hashed = digest(message).digest()
    if info.message_imprint.message != hashed:
        raise ImprintMismatchError("the token's message imprint does not match the entries it is said to time-stamp")
    embedded = [x509.load_der_x509_certificate(c) for c in response.signed_data.certificates]
    leaf = _signer_certificate(embedded + chain)
    gen_time = info.gen_time if info.gen_time.tzinfo else info.gen_time.replace(tzinfo=timezone.utc)
    if not leaf.not_valid_before_utc <= gen_time <= leaf.not_valid_after_utc:
        raise AuthorityCertificateExpiredError(
            f"the authority certificate {leaf.subject.rfc4514_string()} was valid {leaf.not_valid_before_utc:%Y-%m-%d} "
            f"to {leaf.not_valid_after_utc:%Y-%m-%d}, but the token says {gen_time:%Y-%m-%d %H:%M:%S}; the token proves nothing"
        )
    self_signed = [c for c in chain if c.subject == c.issuer]
    roots = trusted_roots if trusted_roots is not None else self_signed
    if not roots:
        raise UntrustedAuthorityError("no root certificate to check the authority against; give the authority's CA certificate")
    if leaf.subject == leaf.issuer and leaf not in roots:
        raise UntrustedAuthorityError(f"the authority certificate {leaf.subject.rfc4514_string()} is self-signed and not trusted")
    builder = VerifierBuilder(tsa_certificate=leaf)
    for cert in roots:
        builder = builder.add_root_certificate(cert)
    for cert in chain:  # rfc3161-client trusts whatever it is given: never pass a self-signed cert here
        if cert != leaf and cert.subject != cert.issuer and cert not in roots:
            builder = builder.add_intermediate_certificate(cert)
    if nonce is not None:
        builder = builder.nonce(nonce)
    try:
        builder.build().verify(response, hashed)
    except VerificationError as exc:
        raise UntrustedAuthorityError(f"the token does not verify under the trusted authority certificates: {exc}") from exc
    root = _root_of(leaf, chain, roots)
    return TokenInfo(
        gen_time=gen_time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        serial=int(info.serial_number),
        policy=info.policy.dotted_string,
        authority=leaf.subject.rfc4514_string(),
        root=root.subject.rfc4514_string(),
        root_fingerprint=cert_fingerprint(root),
        authority_cert_expired_now=(now or datetime.now(timezone.utc)) > leaf.not_valid_after_utc,
    )


def _signer_certificate(certs: list[x509.Certificate]) -> x509.Certificate:
    for cert in certs:
        try:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            continue
        if x509.ExtendedKeyUsageOID.TIME_STAMPING in eku:
            return cert
    raise UntrustedAuthorityError("no time-stamping certificate in the reply or the given chain; give the authority's certificate chain")


def _root_of(leaf: x509.Certificate, chain: list[x509.Certificate], roots: list[x509.Certificate]) -> x509.Certificate:
    cert = leaf
    for _ in range(len(chain) + 1):
        for root in roots:
            if cert.issuer == root.subject:
                return root
        cert = next((c for c in chain if c.subject == cert.issuer and c != cert), cert)
    return roots[0]


# ---------------------------------------------------------------------- binding to ledger entries
def timestamp_message(ledger_id: str, first_seq: int, last_seq: int, root: str) -> bytes:
    """The bytes whose hash the authority signs for a range of entries."""
    return MESSAGE_DOMAIN + canonical_json({"ledger_id": ledger_id, "first_seq": first_seq, "last_seq": last_seq, "root": root})


@dataclass(frozen=True)
class TokenRecord:
    """A stored token and what it covers (one file under ``tokens/``)."""

    ledger_id: str
    first_seq: int
    last_seq: int
    leaves: list[str]
    root: str
    tsa_url: str
    response: bytes
    chain: list[str]

    @property
    def file_name(self) -> str:
        """``<first>-<last>.json`` with zero-padded sequence numbers."""
        return f"{self.first_seq:08d}-{self.last_seq:08d}.json"

    def message(self) -> bytes:
        """See :func:`timestamp_message`."""
        return timestamp_message(self.ledger_id, self.first_seq, self.last_seq, self.root)

    def certificates(self) -> list[x509.Certificate]:
        """The authority chain stored with the token."""
        return load_certificates("".join(self.chain).encode("ascii"), self.file_name) if self.chain else []

    def encode(self) -> bytes:
        """File bytes: canonical JSON and a newline."""
        doc = {**self.__dict__, "format": RECORD_FORMAT, "version": RECORD_VERSION, "response": self.response.hex()}
        return canonical_json(doc) + b"\n"

    def verify(self, entries: list[Entry], trusted_roots: list[x509.Certificate] | None = None, now: datetime | None = None) -> TokenInfo:
        """Check the covered entries, the Merkle root and the token itself."""
        covered = [e.hash for e in entries if self.first_seq <= e.seq <= self.last_seq]
        if covered != self.leaves or len(covered) != self.last_seq - self.first_seq + 1:
            raise ImprintMismatchError(f"token {self.file_name}: the entries it covers differ from the ledger's")
        if merkle_root(self.leaves) != self.root:
            raise ImprintMismatchError(f"token {self.file_name}: its Merkle root does not match its entries")
        try:
            return verify_token(self.response, self.message(), self.certificates(), trusted_roots, now=now)
        except TimestampError as exc:
            raise type(exc)(f"token {self.file_name}: {exc}") from exc


def _record_types_ok(doc: dict[str, Any]) -> bool:
    hex64 = lambda v: isinstance(v, str) and len(v) == 64 and not v.strip("0123456789abcdef")  # noqa: E731
    return (
        isinstance(doc["ledger_id"], str)
        and all(type(doc[k]) is int and 0 <= doc[k] < 1 << 63 for k in ("first_seq", "last_seq"))
        and isinstance(doc["leaves"], list) and all(hex64(leaf) for leaf in doc["leaves"])
        and hex64(doc["root"])
        and isinstance(doc["tsa_url"], str)
        and isinstance(doc["response"], str)
        and isinstance(doc["chain"], list) and all(isinstance(c, str) and c.isascii() for c in doc["chain"])
    )


def decode_record(data: bytes, where: str) -> TokenRecord:
    """Parse a token record file (canonical form required)."""
    doc = parse_json(data, where, TokenTamperedError, "a token record")
    if not isinstance(doc, dict) or doc.get("format") != RECORD_FORMAT:
        raise TokenTamperedError(f"{where}: not a tracemark token record")
    if doc.get("version") != RECORD_VERSION:
        raise FormatVersionError(f"{where}: token record version {doc.get('version')!r}; this release reads {RECORD_VERSION}")
    try:
        if set(doc) != _RECORD_FIELDS:
            raise ValueError(f"fields {sorted(doc)}")
        if not _record_types_ok(doc):
            raise ValueError("a field has the wrong type or form")
        record = TokenRecord(
            ledger_id=doc["ledger_id"],
            first_seq=doc["first_seq"],
            last_seq=doc["last_seq"],
            leaves=list(doc["leaves"]),
            root=doc["root"],
            tsa_url=doc["tsa_url"],
            response=bytes.fromhex(doc["response"]),
            chain=list(doc["chain"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise TokenTamperedError(f"{where}: malformed token record ({exc})") from exc
    if recanonical(record.encode, where, TokenTamperedError) != data:
        raise TokenTamperedError(f"{where}: token record is not in canonical form; its bytes were altered")
    return record


# ---------------------------------------------------------------------- requesting
def request_token(url: str, message: bytes, timeout: float = 30.0) -> tuple[bytes, int | None]:
    """POST an RFC 3161 request for ``message`` to ``url``; return the DER reply and the nonce sent."""
    request = TimestampRequestBuilder().data(message).hash_algorithm(HashAlgorithm.SHA256).build()
    try:
        reply = httpx.post(
            url, content=request.as_bytes(), headers={"Content-Type": "application/timestamp-query"}, timeout=timeout
        )
    except httpx.HTTPError as exc:
        raise TimestampError(f"cannot reach the time-stamp authority at {url} ({exc}); check the URL and network") from exc
    if reply.status_code != 200:
        raise TimestampError(f"the time-stamp authority at {url} answered HTTP {reply.status_code}: {reply.text[:200]}")
    return reply.content, request.nonce


def last_covered_seq(entries: list[Entry]) -> int:
    """The last sequence number covered by a ``timestamped`` entry (-1 if none)."""
    covered = [int(e.payload["last_seq"]) for e in entries if e.event == TIMESTAMPED]
    return max(covered, default=-1)


def pending_entries(entries: list[Entry]) -> list[Entry]:
    """Entries not yet covered by a token (empty if only ``timestamped`` records are new)."""
    pending = [e for e in entries if e.seq > last_covered_seq(entries)]
    return pending if any(e.event != TIMESTAMPED for e in pending) else []


def obtain_timestamp(
    ledger: Ledger,
    tsa_url: str,
    chain_pem: bytes,
    trusted_roots: list[x509.Certificate] | None = None,
    timeout: float = 30.0,
) -> tuple[Entry, TokenInfo] | None:
    """Time-stamp the ledger's pending entries with one request (a Merkle root); ``None`` if nothing is pending.

    The token is verified before it is kept; its record goes to ``tokens/`` and a
    ``timestamped`` entry (with the record's SHA-256) is appended to the chain.
    """
    entries = ledger.entries()
    pending = pending_entries(entries)
    if not pending:
        return None
    chain = load_certificates(chain_pem, "authority chain")
    leaves = [e.hash for e in pending]
    record = TokenRecord(
        ledger_id=str(entries[0].payload["ledger_id"]),
        first_seq=pending[0].seq,
        last_seq=pending[-1].seq,
        leaves=leaves,
        root=merkle_root(leaves),
        tsa_url=tsa_url,
        response=b"",
        chain=[_pem(c) for c in chain],
    )
    response, nonce = request_token(tsa_url, record.message(), timeout)
    info = verify_token(response, record.message(), chain, trusted_roots, nonce=nonce)
    record = TokenRecord(**{**record.__dict__, "response": response})
    data = record.encode()
    path = ledger.tokens_dir / record.file_name
    if path.exists():
        raise LedgerError(f"{path} already exists; another process time-stamped the same entries")
    atomic_write_bytes(path, data, mode=0o644)
    payload = {
        "first_seq": record.first_seq,
        "last_seq": record.last_seq,
        "root": record.root,
        "record": f"tokens/{record.file_name}",
        "record_sha256": sha256_hex(data),
        "gen_time": info.gen_time,
        "authority": info.authority,
        "root_fingerprint": info.root_fingerprint,
    }
    return ledger.append(TIMESTAMPED, payload), info
