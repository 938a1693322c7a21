"""Recipient stanza, in the manner of ``age``: X25519 with a fresh ephemeral key, then HKDF-SHA256.

KEK = HKDF(X25519(ephemeral, recipient), salt = ephemeral_pub || recipient_pub,
info = "tracemark-package/1 x25519"). Unlike ``age`` the stanza names the recipient by a short
fingerprint, so a wrong key is reported as such rather than as a generic failure.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tracemark.errors import PackageError
from tracemark.package.errors import WrongRecipientKeyError
from tracemark.package.signing import VendorKey, VendorPublicKey, raw_public, recipient_id
from tracemark.package.wrap.base import b64, open_sealed, seal, unb64
from tracemark.package.wrap.stanza import check_stanza

KIND = "x25519"
HKDF_INFO = b"tracemark-package/1 x25519"


def _kek(shared: bytes, ephemeral_pub: bytes, recipient_pub: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=ephemeral_pub + recipient_pub, info=HKDF_INFO).derive(shared)


def _public(key: X25519PublicKey | VendorPublicKey) -> X25519PublicKey:
    return key.x25519 if isinstance(key, VendorPublicKey) else key


@dataclass(frozen=True)
class RecipientWrap:
    """Wrap for the holder of an X25519 private key (a vendor's own key, or a customer's)."""

    recipient: X25519PublicKey | VendorPublicKey

    kind = KIND

    def stanza(self, data_key: bytes, core_digest: bytes) -> dict:
        recipient_pub = raw_public(_public(self.recipient))
        ephemeral = X25519PrivateKey.generate()
        ephemeral_pub = raw_public(ephemeral.public_key())
        shared = ephemeral.exchange(_public(self.recipient))
        kek = _kek(shared, ephemeral_pub, recipient_pub)
        return {
            **seal(KIND, kek, data_key, core_digest),
            "recipient": recipient_id(recipient_pub),
            "ephemeral": b64(ephemeral_pub),
        }

    def describe(self) -> str:
        return f"recipient {recipient_id(raw_public(_public(self.recipient)))}"


@dataclass(frozen=True)
class RecipientKey:
    """Unlock a package wrapped for this X25519 private key (or a vendor key's)."""

    private: X25519PrivateKey

    kind = KIND

    @classmethod
    def from_vendor(cls, key: VendorKey) -> "RecipientKey":
        return cls(key.x25519)

    def unwrap(self, stanza: dict, core_digest: bytes) -> bytes:
        check_stanza(stanza)
        recipient_pub = raw_public(self.private.public_key())
        mine = recipient_id(recipient_pub)
        if stanza.get("recipient") != mine:
            raise WrongRecipientKeyError(
                f"package is wrapped for recipient {stanza.get('recipient')}, not for key {mine}; use the matching private key"
            )
        ephemeral_pub = unb64(stanza, "ephemeral")
        try:
            shared = self.private.exchange(X25519PublicKey.from_public_bytes(ephemeral_pub))
        except ValueError as exc:  # malformed or low-order point (all-zero shared secret)
            raise PackageError(f"x25519 stanza: invalid ephemeral key ({exc}); the package is damaged or forged") from exc
        data_key = open_sealed(stanza, _kek(shared, ephemeral_pub, recipient_pub), core_digest)
        if data_key is None:
            raise WrongRecipientKeyError(f"recipient key {mine} does not open this package's stanza (altered manifest?)")
        return data_key
