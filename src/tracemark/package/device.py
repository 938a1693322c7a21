"""Device identity and enrolment: what a vendor needs to bind a package to one customer box.

``tracemark device enrol`` runs on the box and writes an enrolment file: the device id (public,
listed in licences), the machine secret (for the weak ``machine`` stanza; absent if declined)
and, when the box has a TPM 2.0, the public area of its storage key and a PCR policy digest,
which let the vendor seal a key to that TPM without ever touching it (see wrap/tpm.py).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tracemark._util.canonical import sha256_hex
from tracemark._util.files import atomic_write_bytes
from tracemark.errors import DeviceError, PackageError

FORMAT = "tracemark-device-enrolment"
VERSION = 1
MACHINE_ID_PATHS = ("/etc/machine-id", "/var/lib/dbus/machine-id")
PRODUCT_UUID_PATH = "/sys/class/dmi/id/product_uuid"


def machine_identity(paths: tuple[str, ...] = MACHINE_ID_PATHS) -> bytes:
    """The raw machine identity: the systemd machine id, plus the DMI product UUID where readable."""
    for path in paths:
        try:
            machine_id = Path(path).read_text("ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if machine_id:
            break
    else:
        raise DeviceError(f"no machine id found in {', '.join(paths)}; run `systemd-machine-id-setup` on this device")
    try:
        product_uuid = Path(PRODUCT_UUID_PATH).read_text("ascii").strip()
    except (OSError, UnicodeDecodeError):
        product_uuid = ""
    return f"{machine_id}\x00{product_uuid}".encode("ascii")


def device_id(identity: bytes | None = None) -> str:
    """This device's public id (what licences list): a hash of its machine identity."""
    identity = machine_identity() if identity is None else identity
    return "dev-" + sha256_hex(b"tracemark device id\x00" + identity)[:20]


def machine_secret(identity: bytes | None = None) -> bytes:
    """The 32-byte machine-derived secret. Weak: anyone who can read the machine id can derive it."""
    identity = machine_identity() if identity is None else identity
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"tracemark-package/1 machine secret").derive(identity)


@dataclass(frozen=True)
class TpmEnrolment:
    """A device TPM's storage-key public area (marshalled TPM2B_PUBLIC) and its PCR policy."""

    parent_public: bytes
    pcrs: str
    policy_digest: bytes

    def to_dict(self) -> dict:
        return {
            "parent_public": base64.b64encode(self.parent_public).decode(),
            "pcrs": self.pcrs,
            "policy_digest": self.policy_digest.hex(),
        }

    @classmethod
    def from_dict(cls, raw: dict) -> "TpmEnrolment":
        return cls(base64.b64decode(raw["parent_public"], validate=True), str(raw["pcrs"]), bytes.fromhex(raw["policy_digest"]))


@dataclass(frozen=True)
class DeviceEnrolment:
    """What ``tracemark device enrol`` records about a device, for the vendor."""

    device_id: str
    created: str
    machine_secret: bytes | None = None
    tpm: TpmEnrolment | None = None

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "device_id": self.device_id,
            "created": self.created,
            "machine_secret": None if self.machine_secret is None else base64.b64encode(self.machine_secret).decode(),
            "tpm": None if self.tpm is None else self.tpm.to_dict(),
        }

    def save(self, path: str | Path) -> Path:
        """Write the enrolment atomically, owner-only (it may hold the machine secret)."""
        return atomic_write_bytes(path, json.dumps(self.to_dict(), indent=1).encode() + b"\n", mode=0o600)

    @classmethod
    def load(cls, path: str | Path) -> "DeviceEnrolment":
        """Read an enrolment file written by :meth:`save`."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PackageError(f"{path}: cannot read device enrolment ({exc}); create one with `tracemark device enrol`") from exc
        if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("version") != VERSION:
            raise PackageError(f"{path}: not a version-{VERSION} tracemark device enrolment file")
        try:
            secret = raw.get("machine_secret")
            return cls(
                str(raw["device_id"]),
                str(raw["created"]),
                None if secret is None else base64.b64decode(secret, validate=True),
                None if raw.get("tpm") is None else TpmEnrolment.from_dict(raw["tpm"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PackageError(f"{path}: malformed device enrolment ({exc})") from exc

    def __str__(self) -> str:
        methods = [m for m, ok in (("machine secret", self.machine_secret), ("TPM 2.0", self.tpm)) if ok]
        return f"device {self.device_id} enrolled {self.created} ({', '.join(methods) or 'id only'})"


def enrol_device(include_machine_secret: bool = True, tpm: TpmEnrolment | None = None, identity: bytes | None = None) -> DeviceEnrolment:
    """Enrol this device (run it on the device); pass ``tpm`` from :func:`tracemark.package.wrap.tpm.enrol_tpm`."""
    identity = machine_identity() if identity is None else identity
    return DeviceEnrolment(
        device_id(identity),
        datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        machine_secret(identity) if include_machine_secret else None,
        tpm,
    )
