"""Open a package: verify the signature, check the licence, unwrap the key, decrypt in memory, rebuild.

Nothing decrypted ever touches the file system: the weights go from the package file into one
in-memory buffer and from there into tensors (views of it), an onnxruntime session or a
torch.export program. Only :func:`unpack_package` writes plaintext, and only when asked.
"""

from __future__ import annotations

import base64
import hashlib
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import torch

from tracemark._util.files import atomic_write_bytes
from tracemark.errors import PackageError, TracemarkError
from tracemark.package.chunks import PlainBuffer, decrypt_into_memory, read_tags, wipe
from tracemark.package.device import device_id as this_device_id
from tracemark.package.errors import CorruptPackageError, KeyUnwrapError
from tracemark.package.format import Container, Manifest, read_container
from tracemark.package.licence import Licence, OutputPolicy
from tracemark.package.modelio import exported_module, module_from_tensors, onnx_session, tensors_from_buffer
from tracemark.package.signing import verify_manifest
from tracemark.package.wrap import Unlocker
from tracemark.trust.signers import KeySpec, check_signer, pinned_vendor_keys

VendorKeys = KeySpec | Sequence[KeySpec] | None
"""Pinned vendor key(s): ``VendorPublicKey`` objects or ``vendor.pub`` paths; ``None`` resolves them from
``$TRACEMARK_VENDOR_PUB`` or the trusted-vendors directory (see :mod:`tracemark.trust.signers`)."""
NOT_CHECKED_WITHOUT_KEY = "chunk contents (AES-GCM needs the data key; give a way to open the package, e.g. --key or --passphrase-env, to check them)"


@dataclass(frozen=True)
class PackageInfo:
    """A package's verified manifest, read without decrypting anything."""

    path: Path
    manifest: Manifest
    signer_pinned: bool
    checked: tuple[str, ...] = ()
    not_checked: tuple[str, ...] = ()

    @property
    def licence(self) -> Licence:
        return self.manifest.licence

    def to_dict(self) -> dict:
        return {"path": str(self.path), "signer_pinned": self.signer_pinned, "manifest": self.manifest.to_dict(),
                "checked": list(self.checked), "not_checked": list(self.not_checked)}

    def __str__(self) -> str:
        m = self.manifest
        wraps = ", ".join(_describe_stanza(w) for w in m.wraps)
        signer = f"vendor {m.vendor_key_id} ({'pinned key' if self.signer_pinned else 'key embedded in the package, not pinned'})"
        return (
            f"package {m.package_id.hex()} at {self.path}\n"
            f"  model {m.model.id}: {m.model.format}, {m.model.size} bytes, sha256 {m.model.sha256}\n"
            f"  {m.payload.layout.count} chunks of {m.payload.layout.chunk_size} bytes, {m.payload.cipher}\n"
            f"  signed by {signer}, created {m.created}\n"
            f"  {m.licence}\n"
            f"  opens with: {wraps}\n"
            f"  checked: {'; '.join(self.checked)}\n"
            f"  not checked: {'; '.join(self.not_checked) or 'nothing'}"
        )


@dataclass
class LoadedPackage:
    """A decrypted, licence-checked package: the model (torch module or onnxruntime session) and its terms."""

    manifest: Manifest
    licence: Licence
    model: torch.nn.Module | None
    session: Any | None
    state_dict: dict[str, torch.Tensor] | None
    unlocked_with: str
    signer_pinned: bool

    def output_policy(self) -> OutputPolicy:
        """What a server of this model must limit its answers to."""
        return self.licence.output_policy

    def to_dict(self) -> dict:
        return {
            "package_id": self.manifest.package_id.hex(),
            "model": self.manifest.model.to_dict(),
            "licence": self.licence.to_dict(),
            "kind": "onnxruntime" if self.session is not None else "torch" if self.model is not None else "tensors",
            "unlocked_with": self.unlocked_with,
            "signer_pinned": self.signer_pinned,
        }

    def __str__(self) -> str:
        kind = self.to_dict()["kind"]
        return f"loaded {self.manifest.model.id} as {kind} (unlocked with {self.unlocked_with}); {self.licence}"


def _describe_stanza(stanza: dict) -> str:
    extra = stanza.get("recipient") or stanza.get("device_id") or stanza.get("pcrs")
    return f"{stanza['type']}" + (f" {extra}" if extra else "")


def _embedded_vendor_key(document: dict, source: str) -> bytes:
    try:
        raw = base64.b64decode(document["vendor"]["ed25519"], validate=True)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptPackageError(f"{source}: manifest names no valid vendor key") from exc
    if len(raw) != 32:
        raise CorruptPackageError(f"{source}: manifest's vendor key has the wrong length")
    return raw


def _verified(fd: int, source: str, vendor_key: VendorKeys, trust_any_signer: bool) -> tuple[Container, Manifest, bool]:
    """Locate, check the signer against the pins, verify the signature, parse and size-check: keyless checks."""
    container = read_container(fd, source)
    document = container.manifest_document(source)
    public, pinned = check_signer(pinned_vendor_keys(vendor_key), _embedded_vendor_key(document, source), source, trust_any_signer)
    verify_manifest(container.manifest_bytes, container.signature, public, source)
    manifest = Manifest.from_dict(document, source)
    if container.payload_size != manifest.payload.layout.ciphertext_size:
        raise CorruptPackageError(
            f"{source}: encrypted payload is {container.payload_size} bytes, the manifest says "
            f"{manifest.payload.layout.ciphertext_size}; chunks were dropped, added or truncated"
        )
    return container, manifest, pinned


def _signed_tags(fd: int, container: Container, manifest: Manifest, source: str) -> list[bytes]:
    """Every chunk's tag, checked against the digest the signature covers."""
    tags = read_tags(fd, container.payload_offset, manifest.payload.layout)
    if hashlib.sha256(b"".join(tags)).hexdigest() != manifest.payload.tags_sha256:
        raise CorruptPackageError(f"{source}: chunk tags do not match the signed manifest; a chunk was altered or replaced")
    return tags


def _keyless_checks(manifest: Manifest, pinned: bool) -> list[str]:
    signer = f"signature by {'pinned' if pinned else 'UNPINNED'} vendor {manifest.vendor_key_id}"
    return [signer, "manifest, licence and key-wrap stanzas (schema and bounds)",
            "chunk table and payload size", f"all {manifest.payload.layout.count} chunk tags against the signed digest"]


def inspect_package(
    path: str | Path,
    vendor_key: VendorKeys = None,
    *,
    trust_any_signer: bool = False,
    unlockers: Unlocker | Sequence[Unlocker] | None = None,
    workers: int | None = None,
) -> PackageInfo:
    """Verify a package and return its manifest and licence; decrypts nothing unless ``unlockers`` are given.

    Without a key it checks all it can: the signer against the pinned keys (as :func:`load_package`), the
    signature, manifest and stanzas, the chunk table and payload size, and every chunk tag against the signed
    digest. With ``unlockers`` it also decrypts every chunk in memory (then wipes it) to authenticate the chunk
    contents and the model's SHA-256; the licence's dates and devices are shown, not enforced.
    """
    path = Path(path)
    source = str(path)
    with _open(path) as handle:
        fd = handle.fileno()
        container, manifest, pinned = _verified(fd, source, vendor_key, trust_any_signer)
        tags = _signed_tags(fd, container, manifest, source)
        checked, not_checked = _keyless_checks(manifest, pinned), [NOT_CHECKED_WITHOUT_KEY]
        if unlockers is not None:
            plain, used = _decrypt(fd, container, manifest, tags, _as_list(unlockers), source, workers)
            matches = hashlib.sha256(plain).hexdigest() == manifest.model.sha256
            wipe(plain)
            if not matches:
                raise CorruptPackageError(f"{source}: decrypted model does not match the manifest's SHA-256")
            checked.append(f"every chunk decrypts and authenticates, model SHA-256 matches (opened with {used})")
            not_checked = ["licence dates and devices (shown, not enforced)"]
    return PackageInfo(path, manifest, pinned, tuple(checked), tuple(not_checked))


def _open(path: Path):
    if not path.is_file():
        raise PackageError(f"no package at {path}")
    return path.open("rb")


def _unwrap(manifest: Manifest, unlockers: Sequence[Unlocker], source: str) -> tuple[bytes, str]:
    digest = manifest.core_digest()
    failures: list[TracemarkError] = []
    for unlocker in unlockers:
        for stanza in manifest.wraps:
            if stanza["type"] != unlocker.kind:
                continue
            try:
                return unlocker.unwrap(stanza, digest), _describe_stanza(stanza)
            except TracemarkError as exc:
                failures.append(exc)
    if failures:
        raise failures[0]
    offered = ", ".join(_describe_stanza(w) for w in manifest.wraps) or "nothing"
    given = ", ".join(sorted({u.kind for u in unlockers})) or "nothing"
    raise KeyUnwrapError(f"{source}: opens with {offered}; you gave {given}. Give a matching passphrase, key or device")


def _as_list(unlockers: Unlocker | Sequence[Unlocker]) -> list[Unlocker]:
    return [unlockers] if hasattr(unlockers, "kind") else list(unlockers)  # type: ignore[arg-type, list-item]


def _decrypt(
    fd: int, container: Container, manifest: Manifest, tags: list[bytes], unlockers: list[Unlocker], source: str, workers: int | None
) -> tuple[PlainBuffer, str]:
    data_key, used = _unwrap(manifest, unlockers, source)
    payload = manifest.payload
    plain = decrypt_into_memory(
        fd, container.payload_offset, payload.layout, data_key, manifest.package_id, payload.nonce_prefix, tags, workers, source
    )
    return plain, used


def decrypt_package(
    path: str | Path,
    unlockers: Unlocker | Sequence[Unlocker],
    *,
    vendor_key: VendorKeys = None,
    trust_any_signer: bool = False,
    device_id: str | None = None,
    now: datetime | None = None,
    workers: int | None = None,
) -> tuple[Manifest, PlainBuffer, str]:
    """Verify, check the licence, unwrap and decrypt: the manifest, the plaintext model bytes and the stanza used.

    The plaintext is a writable buffer in memory (a ``bytearray``, or an anonymous memory map for
    large models): ``bytes(plain)``, ``memoryview(plain)`` and ``len(plain)`` work on both.

    The signer must be a pinned vendor key (``vendor_key``, else ``$TRACEMARK_VENDOR_PUB``, else the
    trusted-vendors directory; :mod:`tracemark.trust.signers`) or :class:`UntrustedSignerError` is raised;
    ``trust_any_signer=True`` accepts any signer with an :class:`UntrustedSignerWarning`.
    ``device_id`` defaults to this machine's id (only computed when the licence restricts devices).
    """
    manifest, plain, used, _ = _decrypt_checked(path, unlockers, vendor_key, trust_any_signer, device_id, now, workers)
    return manifest, plain, used


def _decrypt_checked(
    path: str | Path, unlockers: Unlocker | Sequence[Unlocker], vendor_key: VendorKeys, trust_any_signer: bool,
    device_id: str | None, now: datetime | None, workers: int | None,
) -> tuple[Manifest, PlainBuffer, str, bool]:
    """:func:`decrypt_package`, also saying whether the signer is pinned."""
    path = Path(path)
    source = str(path)
    with _open(path) as handle:
        fd = handle.fileno()
        container, manifest, pinned = _verified(fd, source, vendor_key, trust_any_signer)
        tags = _signed_tags(fd, container, manifest, source)
        if manifest.licence.allowed_devices and device_id is None:
            device_id = this_device_id()
        manifest.licence.check(device_id, now)
        plain, used = _decrypt(fd, container, manifest, tags, _as_list(unlockers), source, workers)
    return manifest, plain, used, pinned


def load_package(
    path: str | Path,
    unlockers: Unlocker | Sequence[Unlocker],
    *,
    vendor_key: VendorKeys = None,
    trust_any_signer: bool = False,
    device_id: str | None = None,
    now: datetime | None = None,
    workers: int | None = None,
) -> LoadedPackage:
    """Open a package into a usable model, in memory only. See :func:`decrypt_package` for the checks.

    Safetensors with an architecture reference give a torch module (``model``), without one the
    tensors (``state_dict``); ONNX gives an onnxruntime ``session``; torch.export a torch module.
    The signer must be pinned (``vendor_key`` or the environment; see :func:`decrypt_package`), or
    ``trust_any_signer=True`` given.
    """
    manifest, plain, used, pinned = _decrypt_checked(path, unlockers, vendor_key, trust_any_signer, device_id, now, workers)
    source, fmt = str(path), manifest.model.format
    model = session = state = None
    if fmt == "safetensors":
        state = tensors_from_buffer(plain, source)
        if manifest.model.architecture is not None:
            model, state = module_from_tensors(state, manifest.model.architecture, source), None
    else:  # onnxruntime and torch.export copy the bytes they are given: wipe ours once they are built
        data = plain if fmt == "onnx" or isinstance(plain, bytearray) else bytearray(plain)  # trust.modelfiles takes a bytearray
        try:
            if fmt == "onnx":
                session = onnx_session(data, source)
            else:
                model = exported_module(data, source)
        finally:
            wipe(data)
            if data is not plain:
                wipe(plain)
    return LoadedPackage(manifest, manifest.licence, model, session, state, used, pinned)


def unpack_package(
    path: str | Path,
    out: str | Path,
    unlockers: Unlocker | Sequence[Unlocker],
    *,
    vendor_key: VendorKeys = None,
    trust_any_signer: bool = False,
    device_id: str | None = None,
    now: datetime | None = None,
) -> Path:
    """Write the decrypted model to ``out`` (owner-only, atomically) after every check; warns, since this
    leaves a plaintext copy that no licence protects."""
    manifest, plain, _ = decrypt_package(
        path, unlockers, vendor_key=vendor_key, trust_any_signer=trust_any_signer, device_id=device_id, now=now
    )
    if hashlib.sha256(plain).hexdigest() != manifest.model.sha256:
        raise CorruptPackageError(f"{path}: decrypted model does not match the manifest's SHA-256")
    warnings.warn(f"writing the decrypted model to {out}: this plaintext copy is unprotected", stacklevel=2)
    return atomic_write_bytes(out, bytes(plain), mode=0o600)


__all__ = ["PackageInfo", "LoadedPackage", "inspect_package", "decrypt_package", "load_package", "unpack_package"]
