"""Checks every key-wrapping stanza of a manifest against a fixed schema before any key work.

A stanza comes from the package file, so each field's type, size and cost is checked against
the bounds in :mod:`tracemark.trust.kdf` first: a malformed one raises
:class:`KeyWrapStanzaError`, one that demands too much scrypt work :class:`KeyWrapBoundsError`.
The unlockers then only see stanzas of known shape.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

from tracemark.package.errors import KeyWrapBoundsError, KeyWrapStanzaError
from tracemark.trust.kdf import SALT_MAX, SALT_MIN, bounded_b64, check_scrypt, check_total_scrypt_work

MAX_STANZAS = 64
NONCE_SIZE = 12
WRAPPED_KEY_SIZE = 32 + 16
TPM_BLOB_MAX = 4096
_RECIPIENT = re.compile(r"[0-9a-f]{16}")
_DEVICE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_HEX_NAME = re.compile(r"(?:[0-9a-f]{2}){2,66}")
_PCRS = re.compile(r"[a-z0-9]{1,16}:[0-9]{1,2}(?:,[0-9]{1,2}){0,23}(?:\+[a-z0-9]{1,16}:[0-9]{1,2}(?:,[0-9]{1,2}){0,23}){0,3}")


def _b64(stanza: dict, field: str, sizes: tuple[int, int]) -> None:
    bounded_b64(stanza.get(field), f"{stanza['type']} stanza field {field!r}", sizes, KeyWrapStanzaError)


def _text(stanza: dict, field: str, pattern: re.Pattern[str]) -> None:
    value = stanza.get(field)
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise KeyWrapStanzaError(f"{stanza['type']} stanza field {field!r} is missing or malformed ({str(value)[:40]!r})")


def _passphrase(stanza: dict) -> None:
    _b64(stanza, "salt", (SALT_MIN, SALT_MAX))
    check_scrypt(stanza.get("n"), stanza.get("r"), stanza.get("p"), "passphrase stanza", KeyWrapBoundsError)


def _x25519(stanza: dict) -> None:
    _text(stanza, "recipient", _RECIPIENT)
    _b64(stanza, "ephemeral", (32, 32))


def _machine(stanza: dict) -> None:
    _b64(stanza, "salt", (SALT_MIN, SALT_MAX))
    _text(stanza, "device_id", _DEVICE)


def _tpm2(stanza: dict) -> None:
    _text(stanza, "device_id", _DEVICE)
    _text(stanza, "parent_name", _HEX_NAME)
    _text(stanza, "pcrs", _PCRS)
    for field in ("public", "duplicate", "seed"):
        _b64(stanza, field, (1, TPM_BLOB_MAX))


_SCHEMAS: dict[str, Callable[[dict], None]] = {"passphrase": _passphrase, "x25519": _x25519, "machine": _machine, "tpm2": _tpm2}


def check_stanza(stanza: Any) -> dict:
    """Return ``stanza`` if it is a well-formed stanza of a known type within the bounds, else raise."""
    if not isinstance(stanza, dict) or not isinstance(stanza.get("type"), str):
        raise KeyWrapStanzaError("a key-wrapping stanza must be an object with a 'type'")
    schema = _SCHEMAS.get(stanza["type"])
    if schema is None:
        raise KeyWrapStanzaError(f"key-wrapping stanza type {stanza['type'][:40]!r} unknown; this release reads "
                                 f"{', '.join(_SCHEMAS)} (upgrade tracemark, or ask the vendor for a compatible package)")
    _b64(stanza, "nonce", (NONCE_SIZE, NONCE_SIZE))
    _b64(stanza, "wrapped_key", (WRAPPED_KEY_SIZE, WRAPPED_KEY_SIZE))
    schema(stanza)
    return stanza


def check_stanzas(stanzas: Any) -> tuple[dict, ...]:
    """Check every stanza (:func:`check_stanza`), their number and their scrypt work together."""
    if not isinstance(stanzas, list) or not 1 <= len(stanzas) <= MAX_STANZAS:
        raise KeyWrapStanzaError(f"a package needs a list of 1 to {MAX_STANZAS} key-wrapping stanzas")
    checked: Sequence[dict] = [check_stanza(s) for s in stanzas]
    scrypt = [(s["n"], s["r"], s["p"]) for s in checked if s["type"] == "passphrase"]
    check_total_scrypt_work(scrypt, "package", KeyWrapBoundsError)
    return tuple(checked)


__all__ = ["MAX_STANZAS", "check_stanza", "check_stanzas"]
