"""Which RFC 3161 time-stamp authorities are pinned: ``--tsa-ca FILE``, else ``$TRACEMARK_TSA_CA``.

A token carries its authority's chain, so without a pin it is checked against the root it
brings: that proves the token is consistent, not who issued it. Every verifier that reads
tokens (``ledger verify``, ``evidence verify``) then says so with :func:`unpinned_warning`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509

from tracemark.errors import TimestampError

ENV_TSA_CA = "TRACEMARK_TSA_CA"


def pinned_authority_roots(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> list[x509.Certificate] | None:
    """The pinned root certificates from ``path`` or ``$TRACEMARK_TSA_CA`` (PEM); ``None`` when nothing is pinned."""
    environ = os.environ if environ is None else environ
    source = path if path is not None else environ.get(ENV_TSA_CA) or None
    if source is None:
        return None
    file = Path(source)
    if not file.is_file():
        raise TimestampError(f"no authority certificate file at {file}; give the authority's root CA certificate (PEM)")
    try:
        certs = x509.load_pem_x509_certificates(file.read_bytes())
    except ValueError as exc:
        raise TimestampError(f"{file}: not a PEM certificate ({exc}); give the authority's root CA certificate") from exc
    return certs


def unpinned_warning() -> str:
    """The one line verifiers print when tokens were checked without a pinned authority."""
    return (f"the time-stamp authority is not pinned (--tsa-ca or ${ENV_TSA_CA}): tokens were checked against the root "
            "they carry; compare the root fingerprints above with the authority's published one")


__all__ = ["ENV_TSA_CA", "pinned_authority_roots", "unpinned_warning"]
