"""Passphrase stanza: the KEK is scrypt(passphrase, salt) with the cost parameters stored in the stanza."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from tracemark.errors import PackageError
from tracemark.package.errors import WrongPackagePassphraseError
from tracemark.package.wrap.base import b64, open_sealed, seal, unb64
from tracemark.package.wrap.stanza import check_stanza
from tracemark.trust.kdf import check_scrypt

KIND = "passphrase"
DEFAULT_N, DEFAULT_R, DEFAULT_P = 2**17, 8, 1


def _kek(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


@dataclass(frozen=True)
class PassphraseWrap:
    """Wrap for a passphrase. ``n`` is scrypt's cost (2^17 default, ~0.3 s and 128 MiB; at most 2^18, see trust/kdf.py)."""

    passphrase: str = field(repr=False)
    n: int = DEFAULT_N

    kind = KIND

    def __post_init__(self) -> None:
        if not self.passphrase:
            raise PackageError("an empty passphrase protects nothing; choose a real one")
        check_scrypt(self.n, DEFAULT_R, DEFAULT_P, "passphrase wrap", PackageError)

    def stanza(self, data_key: bytes, core_digest: bytes) -> dict:
        salt = os.urandom(16)
        kek = _kek(self.passphrase, salt, self.n, DEFAULT_R, DEFAULT_P)
        return {**seal(KIND, kek, data_key, core_digest), "salt": b64(salt), "n": self.n, "r": DEFAULT_R, "p": DEFAULT_P}

    def describe(self) -> str:
        return "passphrase (scrypt)"


@dataclass(frozen=True)
class Passphrase:
    """Unlock a package with its passphrase."""

    passphrase: str = field(repr=False)

    kind = KIND

    def unwrap(self, stanza: dict, core_digest: bytes) -> bytes:
        check_stanza(stanza)
        kek = _kek(self.passphrase, unb64(stanza, "salt"), stanza["n"], stanza["r"], stanza["p"])
        data_key = open_sealed(stanza, kek, core_digest)
        if data_key is None:
            raise WrongPackagePassphraseError("wrong passphrase for this package (or its manifest was altered)")
        return data_key
