"""Which vendor keys are pinned, and whether a package's signer is one of them.

A package names the key that signed it, so a signature checked against that key proves only
that *someone* signed it: a customer who can unwrap the data key could edit the licence and
re-sign with their own key. Opening a package therefore needs the vendor's public key pinned,
from the first of these that gives any:

1. an explicit key (``--vendor-pub FILE``; ``vendor_key=`` in the Python API);
2. ``$TRACEMARK_VENDOR_PUB``: ``vendor.pub`` files or directories of them, separated by ``os.pathsep``;
3. the directory ``$XDG_CONFIG_HOME/tracemark/trusted-vendors/`` (default ``~/.config/...``): every ``*.pub`` in it.

Without any pin the package is refused (:class:`UntrustedSignerError`), unless the caller opts in
with ``trust_any_signer`` (``--trust-any-signer``), which loads it with an
:class:`UntrustedSignerWarning`. A package signed by a key outside the pins is refused.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence, Union

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tracemark.errors import PackageError
from tracemark.package.errors import UntrustedSignerError, UntrustedSignerWarning
from tracemark.package.signing import VendorPublicKey, key_id, raw_public

ENV_VENDOR_PUB = "TRACEMARK_VENDOR_PUB"
TRUSTED_VENDORS = Path("tracemark") / "trusted-vendors"
EXPLICIT = "--vendor-pub / vendor_key"

KeySpec = Union[VendorPublicKey, str, Path]


def trusted_vendors_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The config directory whose ``*.pub`` files are pinned: ``$XDG_CONFIG_HOME/tracemark/trusted-vendors``."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".config")
    return Path(base) / TRUSTED_VENDORS


def pin_hint(environ: Mapping[str, str] | None = None) -> str:
    """One sentence saying how to pin a vendor key."""
    return (f"pin the vendor's vendor.pub with --vendor-pub FILE, ${ENV_VENDOR_PUB}=FILE or a copy in "
            f"{trusted_vendors_dir(environ)}/ (or pass --trust-any-signer to accept any signer, with a warning)")


@dataclass(frozen=True)
class PinnedVendors:
    """The pinned vendor keys and where they came from (``source`` is empty when none are pinned)."""

    keys: tuple[VendorPublicKey, ...] = ()
    source: str = ""

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(k.key_id for k in self.keys)

    def find(self, ed25519_public: bytes) -> VendorPublicKey | None:
        """The pinned key with these raw Ed25519 public bytes, if any."""
        return next((k for k in self.keys if raw_public(k.ed25519) == ed25519_public), None)


def _load_entry(path: Path, origin: str) -> list[VendorPublicKey]:
    if path.is_dir():
        return [_load_file(p, origin) for p in sorted(path.glob("*.pub"))]
    return [_load_file(path, origin)]


def _load_file(path: Path, origin: str) -> VendorPublicKey:
    try:
        return VendorPublicKey.load(path)
    except PackageError as exc:
        raise PackageError(f"pinned vendor key from {origin} unusable: {exc}") from exc


def pinned_vendor_keys(explicit: KeySpec | Sequence[KeySpec] | None = None, environ: Mapping[str, str] | None = None) -> PinnedVendors:
    """Resolve the pinned vendor keys: ``explicit`` if given, else ``$TRACEMARK_VENDOR_PUB``, else the config directory."""
    environ = os.environ if environ is None else environ
    if explicit is not None:
        specs = [explicit] if isinstance(explicit, (VendorPublicKey, str, Path)) else list(explicit)
        keys = [k for s in specs for k in ([s] if isinstance(s, VendorPublicKey) else _load_entry(Path(s), EXPLICIT))]
        if keys:
            return PinnedVendors(tuple(keys), EXPLICIT)
    entries = [e for e in environ.get(ENV_VENDOR_PUB, "").split(os.pathsep) if e]
    if entries:
        keys = [k for e in entries for k in _load_entry(Path(e), f"${ENV_VENDOR_PUB}")]
        if keys:
            return PinnedVendors(tuple(keys), f"${ENV_VENDOR_PUB}")
    directory = trusted_vendors_dir(environ)
    if directory.is_dir():
        keys = _load_entry(directory, str(directory))
        if keys:
            return PinnedVendors(tuple(keys), str(directory))
    return PinnedVendors()


def check_signer(pins: PinnedVendors, signer: bytes, source: str, trust_any_signer: bool = False) -> tuple[Ed25519PublicKey, bool]:
    """The key to verify ``source``'s signature with, and whether it is pinned.

    Raises :class:`UntrustedSignerError` when ``signer`` (raw Ed25519 bytes named by the package) is
    not among ``pins``, unless ``trust_any_signer``: then warns (:class:`UntrustedSignerWarning`).
    """
    pinned = pins.find(signer)
    if pinned is not None:
        return pinned.ed25519, True
    who = f"signed by vendor {key_id(signer)}"
    if not trust_any_signer:
        if pins.keys:
            raise UntrustedSignerError(
                f"{source}: {who}, not by the pinned key(s) {', '.join(pins.key_ids)} (from {pins.source}); this package "
                "is not from the vendor you trust (forged or re-signed?); pin this vendor's key too if you do trust it"
            )
        raise UntrustedSignerError(f"{source}: {who}, and no vendor key is pinned; {pin_hint()}")
    warnings.warn(
        f"{source}: {who}, a key that is not pinned; opened only because any signer is trusted "
        "(the licence and model may have been forged by anyone)", UntrustedSignerWarning, stacklevel=4,
    )
    return Ed25519PublicKey.from_public_bytes(signer), False


__all__ = [
    "ENV_VENDOR_PUB", "PinnedVendors", "trusted_vendors_dir", "pin_hint", "pinned_vendor_keys", "check_signer",
]
