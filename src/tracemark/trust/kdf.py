"""Bounds on the key-derivation work and key-wrap fields that a file may demand.

A package (or any file carrying its own KDF parameters) is written by someone else, so the
parameters are untrusted input: checked here, before any work, against fixed limits.

scrypt costs ``128 * n * r * p`` bytes of memory-hard work (memory ``128 * n * r``; time
proportional to ``n * r * p``). tracemark's own default (n = 2^17, r = 8, p = 1) is 128 MiB and
about 0.3 s; a file may ask for at most :data:`SCRYPT_MAX_WORK` (256 MiB, about twice that), and
all the scrypt stanzas of one file together for at most :data:`SCRYPT_MAX_TOTAL_WORK`.
"""

from __future__ import annotations

import base64
import binascii

from tracemark.errors import KdfBoundsError

SCRYPT_MIN_N = 2**10
SCRYPT_MAX_R = 32
SCRYPT_MAX_P = 16
SCRYPT_MAX_WORK = 256 << 20
"""Most scrypt work (``128 * n * r * p`` bytes) one derivation may demand."""
SCRYPT_MAX_TOTAL_WORK = 1 << 30
"""Most scrypt work all the derivations one file offers may demand together."""
SALT_MIN, SALT_MAX = 16, 64
MAX_B64_FIELD = 8192
"""Longest base64 text accepted for any key-wrap field (decoded blobs are at most 6 KiB)."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} chars)"


def _mib(work: int) -> str:
    return f"{work >> 20} MiB" if work < 1 << 60 else "over 2^40 MiB"


def scrypt_work(n: int, r: int, p: int) -> int:
    """Bytes of memory-hard work scrypt(n, r, p) costs: ``128 * n * r * p``."""
    return 128 * n * r * p


def check_scrypt(n: object, r: object, p: object, what: str, error: type[Exception] = KdfBoundsError) -> tuple[int, int, int]:
    """Return ``(n, r, p)`` if they are integers scrypt accepts within tracemark's bounds, else raise ``error``.

    ``n`` must be a power of two of at least 2^10 and below 2^(16 r) (scrypt's own rule), ``1 <= r <= 32``,
    ``1 <= p <= 16``, and ``128 * n * r * p <= 256 MiB`` (so n is at most 2^20).
    """
    if not (_is_int(n) and _is_int(r) and _is_int(p)):
        raise error(f"{what}: scrypt parameters n, r, p must be integers (got {_short(n)}, {_short(r)}, {_short(p)})")
    assert isinstance(n, int) and isinstance(r, int) and isinstance(p, int)  # for the type checker
    if not (n >= SCRYPT_MIN_N and n & (n - 1) == 0):
        raise error(f"{what}: scrypt n={_short(n)} is not a power of two of at least 2^10")
    if not (1 <= r <= SCRYPT_MAX_R and 1 <= p <= SCRYPT_MAX_P):
        raise error(f"{what}: scrypt r={_short(r)}, p={_short(p)} outside 1..{SCRYPT_MAX_R} and 1..{SCRYPT_MAX_P}")
    work = scrypt_work(n, r, p)
    if work > SCRYPT_MAX_WORK:
        raise error(
            f"{what}: scrypt n={_short(n)}, r={r}, p={p} demands {_mib(work)} of work, over the {SCRYPT_MAX_WORK >> 20} MiB "
            "a file may ask for; the file is hostile or from a tool that ignores tracemark's bounds"
        )
    if n.bit_length() - 1 >= 16 * r:
        raise error(f"{what}: scrypt n={n} is too large for r={r} (n must be below 2^(16 r))")
    return n, r, p


def check_total_scrypt_work(params: list[tuple[int, int, int]], what: str, error: type[Exception] = KdfBoundsError) -> None:
    """Raise ``error`` if the scrypt derivations ``params`` together exceed :data:`SCRYPT_MAX_TOTAL_WORK`."""
    total = sum(scrypt_work(*p) for p in params)
    if total > SCRYPT_MAX_TOTAL_WORK:
        raise error(f"{what}: {len(params)} scrypt derivations demand {_mib(total)} of work together, "
                    f"over the {SCRYPT_MAX_TOTAL_WORK >> 20} MiB allowed")


def bounded_b64(value: object, what: str, sizes: tuple[int, int], error: type[Exception] = KdfBoundsError) -> bytes:
    """Decode base64 ``value`` whose decoded length must lie in ``sizes`` (inclusive), else raise ``error``."""
    low, high = sizes
    if not isinstance(value, str) or len(value) > MAX_B64_FIELD:
        raise error(f"{what} must be base64 text of at most {MAX_B64_FIELD} characters")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as exc:
        raise error(f"{what} is not valid base64") from exc
    if not low <= len(raw) <= high:
        span = f"{low}" if low == high else f"{low} to {high}"
        raise error(f"{what} is {len(raw)} bytes; it must be {span}")
    return raw


__all__ = [
    "SCRYPT_MIN_N", "SCRYPT_MAX_R", "SCRYPT_MAX_P", "SCRYPT_MAX_WORK", "SCRYPT_MAX_TOTAL_WORK",
    "SALT_MIN", "SALT_MAX", "MAX_B64_FIELD", "scrypt_work", "check_scrypt", "check_total_scrypt_work", "bounded_b64",
]
