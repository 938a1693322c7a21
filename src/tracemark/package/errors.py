"""Package-specific refinements of the errors in :mod:`tracemark.errors`.

Each class also derives from the general class a caller may already catch (a corrupt
package is a :class:`~tracemark.errors.TamperedError`, a wrong passphrase a
:class:`~tracemark.errors.WrongPassphraseError`), so both ``except`` styles work.
"""

from __future__ import annotations

from tracemark.errors import KdfBoundsError, PackageError, SignatureError, TamperedError, WrongPassphraseError


class CorruptPackageError(PackageError, TamperedError):
    """The package's bytes are damaged: truncated, reordered, altered or not a package at all."""


class PackageSignatureError(PackageError, SignatureError):
    """The vendor signature over the manifest does not verify, or is by an unexpected key."""


class UntrustedSignerError(PackageSignatureError):
    """The package is signed by a key that is not pinned (or no vendor key is pinned at all)."""


class UntrustedSignerWarning(UserWarning):
    """A package was opened although its signer is not pinned (``trust_any_signer=True``)."""


class KeyWrapStanzaError(CorruptPackageError):
    """A key-wrapping stanza is malformed: a field is missing, of the wrong type or size, or unknown."""


class KeyWrapBoundsError(KeyWrapStanzaError, KdfBoundsError):
    """A key-wrapping stanza demands more key-derivation work than tracemark allows (see trust/kdf.py)."""


class KeyUnwrapError(PackageError):
    """None of the given unlockers opens any of the package's key-wrapping stanzas."""


class WrongPackagePassphraseError(KeyUnwrapError, WrongPassphraseError):
    """The passphrase does not open the package's passphrase stanza."""


class WrongRecipientKeyError(KeyUnwrapError):
    """The package is not wrapped for the given recipient key."""


__all__ = [
    "CorruptPackageError",
    "PackageSignatureError",
    "UntrustedSignerError",
    "UntrustedSignerWarning",
    "KeyWrapStanzaError",
    "KeyWrapBoundsError",
    "KeyUnwrapError",
    "WrongPackagePassphraseError",
    "WrongRecipientKeyError",
]
