"""Machine stanza: the KEK is derived from a secret computed from the machine's identity.

The WEAK option: the secret comes from the systemd machine id (and the DMI product UUID where
readable), which any local user, or anyone holding a disk image, can read. It stops a file
copied to another box from loading, nothing more. Prefer a TPM stanza where the box has one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tracemark.errors import DeviceError, PackageError
from tracemark.package.device import DeviceEnrolment, device_id, machine_identity, machine_secret
from tracemark.package.wrap.base import b64, open_sealed, seal, unb64
from tracemark.package.wrap.stanza import check_stanza

KIND = "machine"
HKDF_INFO = b"tracemark-package/1 machine kek"


def _kek(secret: bytes, salt: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=salt, info=HKDF_INFO).derive(secret)


@dataclass(frozen=True)
class MachineWrap:
    """Wrap for an enrolled device's machine secret."""

    enrolment: DeviceEnrolment

    kind = KIND

    def __post_init__(self) -> None:
        if self.enrolment.machine_secret is None:
            raise PackageError(
                f"enrolment of {self.enrolment.device_id} holds no machine secret; re-enrol with the machine secret included"
            )

    def stanza(self, data_key: bytes, core_digest: bytes) -> dict:
        salt = os.urandom(16)
        kek = _kek(self.enrolment.machine_secret or b"", salt)
        return {**seal(KIND, kek, data_key, core_digest), "salt": b64(salt), "device_id": self.enrolment.device_id}

    def describe(self) -> str:
        return f"machine secret of {self.enrolment.device_id} (weak)"


@dataclass(frozen=True)
class MachineSecret:
    """Unlock with this machine's derived secret (``identity`` overrides the machine id, for tests)."""

    identity: bytes | None = field(default=None, repr=False)

    kind = KIND

    def unwrap(self, stanza: dict, core_digest: bytes) -> bytes:
        check_stanza(stanza)
        identity = machine_identity() if self.identity is None else self.identity
        here = device_id(identity)
        data_key = open_sealed(stanza, _kek(machine_secret(identity), unb64(stanza, "salt")), core_digest)
        if data_key is None:
            raise DeviceError(
                f"package is bound to machine {stanza.get('device_id')}, and this is {here}; "
                "it can only be opened on the enrolled device"
            )
        return data_key
