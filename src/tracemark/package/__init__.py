"""Protected model packages: one signed, licensed file with the weights encrypted in chunks.

Build with :func:`pack_model`, open with :func:`load_package` (in memory only), read the
manifest and licence without decrypting with :func:`inspect_package`. Format:
docs/formats/package.md; guide: docs/guide/packaging.md.
"""

from __future__ import annotations

from tracemark.package.build import PackResult, pack_model
from tracemark.package.device import DeviceEnrolment, TpmEnrolment, device_id, enrol_device
from tracemark.package.errors import (
    CorruptPackageError,
    KeyUnwrapError,
    PackageSignatureError,
    WrongPackagePassphraseError,
    WrongRecipientKeyError,
)
from tracemark.package.licence import Licence, OutputPolicy
from tracemark.package.load import LoadedPackage, PackageInfo, decrypt_package, inspect_package, load_package, unpack_package
from tracemark.package.signing import VendorKey, VendorPublicKey
from tracemark.package.wrap import (
    MachineSecret,
    MachineWrap,
    Passphrase,
    PassphraseWrap,
    RecipientKey,
    RecipientWrap,
    TpmDevice,
    TpmWrap,
    enrol_tpm,
)

__all__ = [
    "pack_model",
    "PackResult",
    "load_package",
    "decrypt_package",
    "inspect_package",
    "unpack_package",
    "LoadedPackage",
    "PackageInfo",
    "Licence",
    "OutputPolicy",
    "VendorKey",
    "VendorPublicKey",
    "DeviceEnrolment",
    "TpmEnrolment",
    "device_id",
    "enrol_device",
    "PassphraseWrap",
    "Passphrase",
    "RecipientWrap",
    "RecipientKey",
    "MachineWrap",
    "MachineSecret",
    "TpmWrap",
    "TpmDevice",
    "enrol_tpm",
    "CorruptPackageError",
    "KeyUnwrapError",
    "PackageSignatureError",
    "WrongPackagePassphraseError",
    "WrongRecipientKeyError",
]
