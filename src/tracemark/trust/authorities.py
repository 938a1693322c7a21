"""Which RFC 3161 time-stamp authorities are pinned: ``--tsa-ca FILE``, else ``$TRACEMARK_TSA_CA``.

A token carries its authority's chain, so without a pin it can only be checked against the root it
brings: that proves the token is consistent, not who issued it (anyone can run an authority). So a
verifier that reads tokens (``ledger verify``, ``evidence verify``) refuses them when no authority is
pinned (:func:`authority_warnings` raises :class:`~tracemark.ledger.errors.UnpinnedAuthorityError`),
unless the caller opts in (``--trust-any-authority``), which is then said with :func:`unpinned_warning`.
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


def authority_warnings(token_count: int, trusted_roots: list[x509.Certificate] | None, trust_any_authority: bool) -> list[str]:
    """The warnings owed for ``token_count`` tokens checked under ``trusted_roots``; raises
    :class:`~tracemark.ledger.errors.UnpinnedAuthorityError` when tokens exist, no root is pinned and the
    caller did not opt in with ``trust_any_authority``."""
    if not token_count or trusted_roots is not None:
        return []
    if not trust_any_authority:
        from tracemark.ledger.errors import UnpinnedAuthorityError

        raise UnpinnedAuthorityError(
            f"{token_count} time-stamp token(s) to check but no authority is pinned: give the authority's root CA "
            f"certificate with --tsa-ca FILE or ${ENV_TSA_CA}, or pass --trust-any-authority to accept the root each "
            "token carries (with a warning)"
        )
    return [unpinned_warning()]


__all__ = ["ENV_TSA_CA", "authority_warnings", "pinned_authority_roots", "unpinned_warning"]
