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
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tracemark._util.canonical import sha256_hex
from tracemark._util.files import atomic_write_bytes
from tracemark.errors import PackageError, TracemarkError
from tracemark.package.chunks import decrypt_into_memory, read_tags
from tracemark.package.device import device_id as this_device_id
from tracemark.package.errors import CorruptPackageError, KeyUnwrapError, PackageSignatureError
from tracemark.package.format import Container, Manifest, read_container
from tracemark.package.licence import Licence, OutputPolicy
from tracemark.package.modelio import exported_module, module_from_tensors, onnx_session, tensors_from_buffer
from tracemark.package.signing import VendorPublicKey, raw_public, verify_manifest
from tracemark.package.wrap import Unlocker


@dataclass(frozen=True)
class PackageInfo:
    """A package's verified manifest, read without decrypting anything."""

    path: Path
    manifest: Manifest
    signer_pinned: bool

    @property
    def licence(self) -> Licence:
        return self.manifest.licence

    def to_dict(self) -> dict:
        return {"path": str(self.path), "signer_pinned": self.signer_pinned, "manifest": self.manifest.to_dict()}

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
            f"  opens with: {wraps}"
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
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptPackageError(f"{source}: manifest names no valid vendor key") from exc
    if len(raw) != 32:
        raise CorruptPackageError(f"{source}: manifest's vendor key has the wrong length")
    return raw


def _verified(fd: int, source: str, vendor_key: VendorPublicKey | None) -> tuple[Container, Manifest]:
    container = read_container(fd, source)
    document = container.manifest_document(source)
    embedded = _embedded_vendor_key(document, source)
    if vendor_key is not None and embedded != raw_public(vendor_key.ed25519):
        raise PackageSignatureError(
            f"{source}: signed by vendor {sha256_hex(embedded)[:16]}, not by the pinned key {vendor_key.key_id}; "
            "this package is not from the vendor you trust"
        )
    public = vendor_key.ed25519 if vendor_key is not None else Ed25519PublicKey.from_public_bytes(embedded)
    verify_manifest(container.manifest_bytes, container.signature, public, source)
    manifest = Manifest.from_dict(document, source)
    if container.payload_size != manifest.payload.layout.ciphertext_size:
        raise CorruptPackageError(
            f"{source}: encrypted payload is {container.payload_size} bytes, the manifest says "
            f"{manifest.payload.layout.ciphertext_size}; chunks were dropped, added or truncated"
        )
    return container, manifest


def inspect_package(path: str | Path, vendor_key: VendorPublicKey | None = None) -> PackageInfo:
    """Verify a package's signature and structure and return its manifest and licence; decrypts nothing."""
    path = Path(path)
    with _open(path) as fd:
        _, manifest = _verified(fd.fileno(), str(path), vendor_key)
    return PackageInfo(path, manifest, vendor_key is not None)


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


def decrypt_package(
    path: str | Path,
    unlockers: Unlocker | Sequence[Unlocker],
    *,
    vendor_key: VendorPublicKey | None = None,
    device_id: str | None = None,
    now: datetime | None = None,
    workers: int | None = None,
) -> tuple[Manifest, bytearray, str]:
    """Verify, check the licence, unwrap and decrypt: the manifest, the plaintext model bytes and the stanza used.

    ``device_id`` defaults to this machine's id (only computed when the licence restricts devices).
    """
    path = Path(path)
    source = str(path)
    unlockers = [unlockers] if hasattr(unlockers, "kind") else list(unlockers)  # type: ignore[arg-type]
    with _open(path) as handle:
        fd = handle.fileno()
        container, manifest = _verified(fd, source, vendor_key)
        tags = read_tags(fd, container.payload_offset, manifest.payload.layout)
        if hashlib.sha256(b"".join(tags)).hexdigest() != manifest.payload.tags_sha256:
            raise CorruptPackageError(f"{source}: chunk tags do not match the signed manifest; a chunk was altered or replaced")
        if manifest.licence.allowed_devices and device_id is None:
            device_id = this_device_id()
        manifest.licence.check(device_id, now)
        data_key, used = _unwrap(manifest, unlockers, source)
        payload = manifest.payload
        plain = decrypt_into_memory(
            fd, container.payload_offset, payload.layout, data_key, manifest.package_id, payload.nonce_prefix, tags, workers, source
        )
    return manifest, plain, used


def load_package(
    path: str | Path,
    unlockers: Unlocker | Sequence[Unlocker],
    *,
    vendor_key: VendorPublicKey | None = None,
    device_id: str | None = None,
    now: datetime | None = None,
    workers: int | None = None,
) -> LoadedPackage:
    """Open a package into a usable model, in memory only. See :func:`decrypt_package` for the checks.

    Safetensors with an architecture reference give a torch module (``model``), without one the
    tensors (``state_dict``); ONNX gives an onnxruntime ``session``; torch.export a torch module.
    Pin ``vendor_key`` in production: without it the signature is checked against the key the
    package itself names.
    """
    manifest, plain, used = decrypt_package(path, unlockers, vendor_key=vendor_key, device_id=device_id, now=now, workers=workers)
    source, fmt = str(path), manifest.model.format
    model = session = state = None
    if fmt == "safetensors":
        state = tensors_from_buffer(plain, source)
        if manifest.model.architecture is not None:
            model, state = module_from_tensors(state, manifest.model.architecture, source), None
    elif fmt == "onnx":
        session = onnx_session(plain, source)
    else:
        model = exported_module(plain, source)
    return LoadedPackage(manifest, manifest.licence, model, session, state, used, vendor_key is not None)


def unpack_package(
    path: str | Path,
    out: str | Path,
    unlockers: Unlocker | Sequence[Unlocker],
    *,
    vendor_key: VendorPublicKey | None = None,
    device_id: str | None = None,
    now: datetime | None = None,
) -> Path:
    """Write the decrypted model to ``out`` (owner-only, atomically) after every check; warns, since this
    leaves a plaintext copy that no licence protects."""
    manifest, plain, _ = decrypt_package(path, unlockers, vendor_key=vendor_key, device_id=device_id, now=now)
    if hashlib.sha256(plain).hexdigest() != manifest.model.sha256:
        raise CorruptPackageError(f"{path}: decrypted model does not match the manifest's SHA-256")
    warnings.warn(f"writing the decrypted model to {out}: this plaintext copy is unprotected", stacklevel=2)
    return atomic_write_bytes(out, bytes(plain), mode=0o600)


__all__ = ["PackageInfo", "LoadedPackage", "inspect_package", "decrypt_package", "load_package", "unpack_package"]
