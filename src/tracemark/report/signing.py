"""PAdES signatures on the report PDF: the owner's Ed25519 key, an X.509 certificate for it, an RFC 3161 time-stamp.

pyHanko signs and validates. PDF signatures need an X.509 certificate, and the ledger's owner identity is a bare
Ed25519 key, so :func:`owner_certificate` makes a self-signed one from it (kept as ``<owner key>.cert.pem``).
It proves nothing beyond the key: a verifier pins the certificate, or the owner's public key, never the one a
PDF carries. :func:`check_signed_pdf` adds to pyHanko's checks what a signature does not cover by itself, so
that any changed byte is refused: the certificates the signature carries and the padding of ``/Contents``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID

from tracemark._util.files import atomic_write_bytes
from tracemark.ledger.identity import OwnerIdentity, fingerprint, public_key_hex
from tracemark.report.errors import ReportError, ReportSignatureError

FIELD_NAME = "OwnerSignature"
CERT_DAYS = 3650
MAX_PDF_BYTES = 64 << 20
_LOGGERS = ("pyhanko", "pyhanko_certvalidator")


def certificate_path(owner_key: str | Path) -> Path:
    """Where the owner certificate of ``owner_key`` is kept: ``<owner key>.cert.pem``."""
    return Path(f"{owner_key}.cert.pem")


def owner_certificate(owner: OwnerIdentity, name: str = "", days: int = CERT_DAYS) -> x509.Certificate:
    """A self-signed X.509 certificate for the owner's Ed25519 key (digital signature, non-repudiation)."""
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, f"tracemark owner {owner.fingerprint()[:16]}")]
    if name:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, name))
    subject = x509.Name(attributes)
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(owner.public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(owner.public_key), critical=False)
        .sign(owner.private_key, None)
    )


def load_certificate(path: str | Path) -> x509.Certificate:
    """Read an owner certificate (PEM); raises :class:`ReportError` unless it holds a self-signed Ed25519 key."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"no owner certificate at {path}")
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise ReportError(f"{path}: not a PEM certificate ({exc})") from exc
    if not isinstance(cert.public_key(), Ed25519PublicKey):
        raise ReportError(f"{path}: not an Ed25519 owner certificate")
    _check_self_signed(cert, str(path))
    return cert


def ensure_owner_certificate(owner: OwnerIdentity, path: str | Path, name: str = "") -> tuple[x509.Certificate, bool]:
    """The owner certificate at ``path`` (which must hold the owner's key), made and written there if absent; and whether it was made."""
    path = Path(path)
    if path.exists():
        cert = load_certificate(path)
        if public_key_hex(cert.public_key()) != public_key_hex(owner.public_key):  # type: ignore[arg-type]
            raise ReportError(f"{path}: the certificate is for another key than the owner key given")
        return cert, False
    cert = owner_certificate(owner, name)
    atomic_write_bytes(path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert, True


def _check_self_signed(cert: x509.Certificate, where: str) -> None:
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise ReportSignatureError(f"{where}: the certificate's own signature does not verify; it was altered") from exc


def _asn1_cert(cert: x509.Certificate):  # noqa: ANN202 (asn1crypto type)
    from asn1crypto import x509 as asn1_x509

    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


@contextlib.contextmanager
def _quiet_pyhanko() -> Iterator[None]:
    """pyHanko logs each failed path search; our errors say it in one line instead."""
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def sign_pdf(pdf: bytes, owner: OwnerIdentity, cert: x509.Certificate, tsa_url: str,
             attachments: dict[str, tuple[bytes, str]] | None = None, timeout: float = 10.0) -> bytes:
    """``pdf`` with ``attachments`` (name -> (data, MIME type)) embedded and a PAdES B-T signature over all of it.

    The signature is the owner's Ed25519 key (SHA-512 digest), with a signature time-stamp from the RFC 3161
    authority at ``tsa_url``. Raises :class:`ReportError` if the certificate is not the owner's or the authority fails.
    """
    from asn1crypto import keys as asn1_keys
    from pyhanko.pdf_utils import embed
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.sign import fields, signers
    from pyhanko.sign.timestamps import HTTPTimeStamper
    from pyhanko_certvalidator.registry import SimpleCertificateStore

    if public_key_hex(cert.public_key()) != public_key_hex(owner.public_key):  # type: ignore[arg-type]
        raise ReportError("the owner certificate is for another key than the owner key given")
    signing_cert = _asn1_cert(cert)
    key = asn1_keys.PrivateKeyInfo.load(owner.private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    signer = signers.SimpleSigner(signing_cert=signing_cert, signing_key=key, cert_registry=SimpleCertificateStore())
    writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
    for name, (data, mime) in (attachments or {}).items():
        stream = embed.EmbeddedFileObject.from_file_data(writer, data=data, mime_type=mime)
        embed.embed_file(writer, embed.FileSpec(file_spec_string=name, embedded_data=stream, description=name))
    meta = signers.PdfSignatureMetadata(field_name=FIELD_NAME, subfilter=fields.SigSeedSubFilter.PADES, md_algorithm="sha512",
                                        reason="tracemark ownership report", name=cert.subject.rfc4514_string())
    try:
        with _quiet_pyhanko():
            out = signers.sign_pdf(writer, meta, signer=signer, timestamper=HTTPTimeStamper(tsa_url, timeout=timeout),
                                   existing_fields_only=False)
    except Exception as exc:  # noqa: BLE001 (aiohttp, asn1 and pyHanko errors alike: the authority failed)
        if isinstance(exc, ReportError):
            raise
        raise ReportError(f"the time-stamp authority at {tsa_url} did not time-stamp the signature ({type(exc).__name__}: {exc})") from exc
    return out.getvalue()


@dataclass(frozen=True)
class SignedPdf:
    """What a checked signature vouches for (internal to :func:`tracemark.report.ownership.verify_report`)."""

    owner_fingerprint: str
    certificate_sha256: str
    signed_at: str
    authority: str
    attachments: dict[str, bytes]


def _attachments(reader) -> dict[str, bytes]:  # noqa: ANN001 (pyHanko reader)
    if "/Names" not in reader.root or "/EmbeddedFiles" not in reader.root["/Names"]:
        return {}
    listed = reader.root["/Names"]["/EmbeddedFiles"]["/Names"]
    return {str(listed[i]): listed[i + 1]["/EF"]["/F"].data for i in range(0, len(listed) - 1, 2)}


def _line(exc: BaseException) -> str:
    """An exception as one line (asn1crypto's messages span several)."""
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def _structure(signature, pdf: bytes, where: str, pinned: x509.Certificate | Ed25519PublicKey,  # noqa: ANN001 (pyHanko signature)
               tsa_roots: list[x509.Certificate] | None, refuse) -> tuple[x509.Certificate, list]:  # noqa: ANN001
    """The parts of a signature its cryptography does not cover: carried certificates, /Contents encoding and padding,
    the one time-stamp token. Returns the owner certificate and the authority roots to validate the token against."""
    from asn1crypto import cms

    certs = list(signature.signed_data["certificates"] or [])
    if len(certs) != 1:
        raise refuse("the signature carries other certificates than the owner's one")
    carried = x509.load_der_x509_certificate(certs[0].chosen.dump())
    if isinstance(pinned, x509.Certificate):
        if carried != pinned:
            raise refuse("signed with another certificate than the pinned owner certificate")
    else:
        if public_key_hex(carried.public_key()) != public_key_hex(pinned):  # type: ignore[arg-type]
            raise refuse("signed by another key than the owner's pinned key")
        _check_self_signed(carried, where)
    outer = cms.ContentInfo.load(signature.pkcs7_content)
    der = outer.dump()
    if len(outer.contents) != len(outer["content_type"].dump()) + len(outer["content"].dump()):
        raise refuse("the signature's outer length was altered (it takes in bytes after the signature)")
    if signature.pkcs7_content[len(der):].strip(b"\x00"):
        raise refuse("bytes after the signature in /Contents were altered")
    gap = [int(x) for x in signature.byte_range][1:3]
    if pdf[gap[0]:gap[1]] != b"<" + signature.pkcs7_content.hex().upper().encode("ascii") + b">":
        raise refuse("the signature's /Contents is not as the signer wrote it (upper-case hex); the file was altered")
    unsigned = signature.signer_info["unsigned_attrs"]
    tokens = [a for a in (unsigned if unsigned.native else []) if a["type"].native == "signature_time_stamp_token"]
    if len(tokens) != 1 or len(tokens[0]["values"]) != 1:
        raise refuse("the signature is not time-stamped (PAdES B-T needs one signature time-stamp)")
    token = tokens[0]["values"][0]
    _check_unsigned_fields(signature.signed_data, "v1", carried, refuse, "the signature")
    if len(unsigned) != 1:
        raise refuse("the signature carries unsigned attributes besides its time-stamp")
    if token["content_type"].native != "signed_data":
        raise refuse("the signature time-stamp is not a signed token")
    _check_unsigned_fields(token["content"], "v3", None, refuse, "the time-stamp token")
    if tsa_roots is None:
        roots = [c.chosen for c in token["content"]["certificates"] or []]
    else:
        roots = [_asn1_cert(c) for c in tsa_roots]
    return carried, roots


def _check_unsigned_fields(signed_data, version: str, signer: x509.Certificate | None, refuse, what: str) -> None:  # noqa: ANN001
    """What a CMS signature leaves outside its signed attributes must be as a signer writes it: the version, the
    digest algorithm list (exactly the signer's), no CRLs, one signer (identified by the certificate it carries), and
    for the token, content of type TSTInfo and no unsigned attributes."""
    signers_ = signed_data["signer_infos"]
    if len(signers_) != 1:
        raise refuse(f"{what} has {len(signers_)} signers; it has one")
    info = signers_[0]
    listed = [a.dump() for a in signed_data["digest_algorithms"]]
    if signed_data["version"].native != version or listed != [info["digest_algorithm"].dump()]:
        raise refuse(f"{what}: its version or digest algorithm list was altered")
    if signed_data["crls"].native or info["version"].native != "v1":
        raise refuse(f"{what}: its revocation list or signer version was altered")
    content = signed_data["encap_content_info"]
    if signer is not None:
        sid = info["sid"]
        if (sid.name != "issuer_and_serial_number" or sid.chosen["serial_number"].native != signer.serial_number
                or sid.chosen["issuer"].dump() != _asn1_cert(signer).issuer.dump()):
            raise refuse(f"{what}: its signer identifier does not name the certificate it carries")
        if content["content_type"].native != "data" or content["content"].native is not None:
            raise refuse(f"{what}: the signed content type was altered (a PDF signature is detached)")
    elif content["content_type"].native != "tst_info" or info["unsigned_attrs"].native:
        raise refuse(f"{what}: its content type or unsigned attributes were altered")


def check_signed_pdf(pdf: bytes, where: str, pinned: x509.Certificate | Ed25519PublicKey,
                     tsa_roots: list[x509.Certificate] | None) -> SignedPdf:
    """Validate the report's one signature against ``pinned`` (the owner certificate, or the owner's key) and its
    time-stamp against ``tsa_roots`` (``None``: the authority certificate the token carries, trusted as it is).

    Raises :class:`ReportSignatureError` with one line naming what failed.
    """
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.validation import validate_pdf_signature
    from pyhanko.sign.validation.status import SignatureCoverageLevel
    from pyhanko_certvalidator import ValidationContext

    def refuse(why: str) -> ReportSignatureError:
        return ReportSignatureError(f"{where}: {why}")

    try:
        with _quiet_pyhanko():
            reader = PdfFileReader(io.BytesIO(pdf), strict=True)
            signatures = reader.embedded_signatures
    except Exception as exc:  # noqa: BLE001 (any parse failure of untrusted bytes)
        raise refuse(f"not a readable signed PDF ({_line(exc)}); the file was altered or is not a tracemark report") from exc
    if len(signatures) != 1:
        raise refuse(f"holds {len(signatures)} signatures; a tracemark report holds exactly one")
    signature = signatures[0]
    try:
        carried, roots = _structure(signature, pdf, where, pinned, tsa_roots, refuse)
    except ReportError:
        raise
    except Exception as exc:  # noqa: BLE001 (asn1crypto parses lazily, cryptography reads the certificate: malformed parts fail here)
        raise refuse(f"the signature cannot be read ({_line(exc)}); it was altered") from exc
    try:
        with _quiet_pyhanko():
            status = validate_pdf_signature(signature, signer_validation_context=ValidationContext(trust_roots=[_asn1_cert(carried)]),
                                            ts_validation_context=ValidationContext(trust_roots=roots))
    except Exception as exc:  # noqa: BLE001 (malformed CMS inside a readable PDF)
        raise refuse(f"the signature cannot be checked ({_line(exc)}); it was altered") from exc
    if not (status.intact and status.valid):
        raise refuse("the signature does not match the content; the file was altered after signing")
    if status.coverage != SignatureCoverageLevel.ENTIRE_FILE:
        raise refuse("bytes were changed or added outside what the owner signed")
    if not status.trusted:
        raise refuse("the owner's certificate is not valid now (expired or not yet valid)")
    stamp = status.timestamp_validity
    if stamp is None or not (stamp.intact and stamp.valid):
        raise refuse("the signature time-stamp does not verify; it was altered")
    if not stamp.trusted:
        raise refuse("the signature time-stamp is not from the pinned authority (--tsa-ca)")
    on_path = {c.dump() for c in stamp.validation_path.iter_certs(include_root=True)}
    if any(c.chosen.dump() not in on_path for c in signature.signer_info["unsigned_attrs"][0]["values"][0]["content"]["certificates"] or []):
        raise refuse("the signature time-stamp carries a certificate that is not on its authority's path; it was altered")
    try:
        attachments = _attachments(reader)
    except Exception as exc:  # noqa: BLE001 (a structure pyHanko accepted but that holds no attachments)
        raise refuse(f"the report's embedded data cannot be read ({_line(exc)})") from exc
    return SignedPdf(
        owner_fingerprint=fingerprint(carried.public_key()),  # type: ignore[arg-type]
        certificate_sha256=carried.fingerprint(hashes.SHA256()).hex(),
        signed_at=stamp.timestamp.isoformat(),
        authority=x509.load_der_x509_certificate(stamp.signing_cert.dump()).subject.rfc4514_string(),
        attachments=attachments,
    )


def read_pdf(path: str | Path) -> bytes:
    """The bytes of a report PDF, refused above :data:`MAX_PDF_BYTES`."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"no report at {path}")
    if path.stat().st_size > MAX_PDF_BYTES:
        raise ReportError(f"{path}: larger than {MAX_PDF_BYTES >> 20} MiB; not a tracemark report")
    return path.read_bytes()
