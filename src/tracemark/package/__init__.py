"""Protected model packages: one signed, licensed file with the weights encrypted in chunks.

Build with :func:`pack_model`, open with :func:`load_package` (in memory only), read the
manifest and licence without decrypting with :func:`inspect_package`. Opening needs the vendor's
key pinned (``vendor_key=``, ``$TRACEMARK_VENDOR_PUB`` or the trusted-vendors directory; see
:mod:`tracemark.trust.signers`) or ``trust_any_signer=True``. Format:
docs/formats/package.md; guide: docs/guide/packaging.md.

Names are imported on first use, so the CLI and the device-side tools start without torch.
"""

from __future__ import annotations

from tracemark._util.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "PackResult": "tracemark.package.build",
    "pack_model": "tracemark.package.build",
    "DeviceEnrolment": "tracemark.package.device",
    "TpmEnrolment": "tracemark.package.device",
    "device_id": "tracemark.package.device",
    "enrol_device": "tracemark.package.device",
    "CorruptPackageError": "tracemark.package.errors",
    "KeyUnwrapError": "tracemark.package.errors",
    "PackageSignatureError": "tracemark.package.errors",
    "UntrustedSignerError": "tracemark.package.errors",
    "UntrustedSignerWarning": "tracemark.package.errors",
    "KeyWrapStanzaError": "tracemark.package.errors",
    "KeyWrapBoundsError": "tracemark.package.errors",
    "WrongPackagePassphraseError": "tracemark.package.errors",
    "WrongRecipientKeyError": "tracemark.package.errors",
    "Licence": "tracemark.package.licence",
    "OutputPolicy": "tracemark.package.licence",
    "LoadedPackage": "tracemark.package.load",
    "PackageInfo": "tracemark.package.load",
    "decrypt_package": "tracemark.package.load",
    "inspect_package": "tracemark.package.load",
    "load_package": "tracemark.package.load",
    "unpack_package": "tracemark.package.load",
    "VendorKey": "tracemark.package.signing",
    "VendorPublicKey": "tracemark.package.signing",
    "MachineSecret": "tracemark.package.wrap",
    "MachineWrap": "tracemark.package.wrap",
    "Passphrase": "tracemark.package.wrap",
    "PassphraseWrap": "tracemark.package.wrap",
    "RecipientKey": "tracemark.package.wrap",
    "RecipientWrap": "tracemark.package.wrap",
    "TpmDevice": "tracemark.package.wrap",
    "TpmWrap": "tracemark.package.wrap",
    "enrol_tpm": "tracemark.package.wrap",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
