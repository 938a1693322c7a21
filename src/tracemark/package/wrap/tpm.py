"""TPM 2.0 stanza: a random KEK sealed to an enrolled device's TPM under a PCR policy.

The vendor never touches the device's TPM. At enrolment the device reports the public area of
its storage key (an ECC P-256 primary under the owner hierarchy, re-derived identically on every
boot) and the PCR policy digest of its current measured state. The vendor then builds a sealed
data object holding the KEK, with that policy, and wraps it for the storage key following the
TPM's duplication rules (``TPM2_Import`` format). Only that TPM can import it, and it unseals
only while the selected PCRs hold the enrolled values: change the firmware or boot chain (or
extend the PCR) and the package no longer opens. Requires ``tpm2-pytss`` (extra ``tpm``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from tracemark.errors import DeviceError, PackageError
from tracemark.package.device import DeviceEnrolment, TpmEnrolment
from tracemark.package.errors import KeyWrapStanzaError
from tracemark.package.wrap.base import b64, open_sealed, seal, unb64
from tracemark.package.wrap.stanza import check_stanza

KIND = "tpm2"
DEFAULT_PCRS = "sha256:7"
DEFAULT_TCTI = "device:/dev/tpmrm0"


def _tss() -> Any:
    try:
        import tpm2_pytss
    except ImportError as exc:
        raise DeviceError(
            "TPM support needs tpm2-pytss: install libtss2-dev and pkg-config, then `pip install 'tracemark[tpm]'`"
        ) from exc
    return tpm2_pytss


def _srk_template() -> Any:
    t = _tss()
    attrs = (
        t.TPMA_OBJECT.FIXEDTPM
        | t.TPMA_OBJECT.FIXEDPARENT
        | t.TPMA_OBJECT.SENSITIVEDATAORIGIN
        | t.TPMA_OBJECT.USERWITHAUTH
        | t.TPMA_OBJECT.RESTRICTED
        | t.TPMA_OBJECT.DECRYPT
        | t.TPMA_OBJECT.NODA
    )
    return t.TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=attrs)


@contextmanager
def _esapi(tcti: str) -> Iterator[Any]:
    t = _tss()
    try:
        ctx = t.ESAPI(tcti)
    except Exception as exc:  # the TSS raises its own error types for absent devices
        raise DeviceError(f"cannot reach a TPM at {tcti!r} ({exc}); check the device or the --tcti option") from exc
    try:
        yield ctx
    finally:
        ctx.close()


def _storage_key(ctx: Any) -> tuple[Any, Any]:
    handle, public, _, _, _ = ctx.create_primary(None, _srk_template())
    return handle, public


def _pcr_policy(ctx: Any, pcrs: str, session_type: Any) -> Any:
    t = _tss()
    session = ctx.start_auth_session(
        t.ESYS_TR.NONE, t.ESYS_TR.NONE, session_type, t.TPMT_SYM_DEF(algorithm=t.TPM2_ALG.NULL), t.TPM2_ALG.SHA256
    )
    ctx.policy_pcr(session, t.TPM2B_DIGEST(), t.TPML_PCR_SELECTION.parse(pcrs))
    return session


def enrol_tpm(tcti: str = DEFAULT_TCTI, pcrs: str = DEFAULT_PCRS) -> TpmEnrolment:
    """Read this device's TPM storage-key public area and the policy digest of its current ``pcrs``."""
    t = _tss()
    try:
        t.TPML_PCR_SELECTION.parse(pcrs)
    except Exception as exc:
        raise PackageError(f"PCR selection {pcrs!r} not understood; write it like 'sha256:0,2,7'") from exc
    with _esapi(tcti) as ctx:
        handle, public = _storage_key(ctx)
        ctx.flush_context(handle)
        trial = _pcr_policy(ctx, pcrs, t.TPM2_SE.TRIAL)
        digest = bytes(ctx.policy_get_digest(trial))
        ctx.flush_context(trial)
    return TpmEnrolment(public.marshal(), pcrs, digest)


@dataclass(frozen=True)
class TpmWrap:
    """Wrap for an enrolled device's TPM (sealed under its storage key, PCR policy)."""

    enrolment: DeviceEnrolment

    kind = KIND

    def __post_init__(self) -> None:
        if self.enrolment.tpm is None:
            raise PackageError(f"enrolment of {self.enrolment.device_id} has no TPM; enrol it with `tracemark device enrol --tpm`")

    def stanza(self, data_key: bytes, core_digest: bytes) -> dict:
        t = _tss()
        from tpm2_pytss.utils import wrap

        tpm = self.enrolment.tpm
        assert tpm is not None  # checked in __post_init__
        parent, _ = t.TPM2B_PUBLIC.unmarshal(tpm.parent_public)
        kek = os.urandom(32)
        sensitive, public = t.TPM2B_SENSITIVE.keyedhash_from_secret(kek, objectAttributes=t.TPMA_OBJECT(0))
        public.publicArea.authPolicy = t.TPM2B_DIGEST(tpm.policy_digest)
        _, duplicate, seed = wrap(parent.publicArea, public, sensitive)
        return {
            **seal(KIND, kek, data_key, core_digest),
            "device_id": self.enrolment.device_id,
            "parent_name": bytes(parent.get_name()).hex(),
            "pcrs": tpm.pcrs,
            "public": b64(public.marshal()),
            "duplicate": b64(duplicate.marshal()),
            "seed": b64(seed.marshal()),
        }

    def describe(self) -> str:
        assert self.enrolment.tpm is not None
        return f"TPM 2.0 of {self.enrolment.device_id} (PCRs {self.enrolment.tpm.pcrs})"


@dataclass(frozen=True)
class TpmDevice:
    """Unlock with this device's TPM, reached through the TSS TCTI string ``tcti``."""

    tcti: str = DEFAULT_TCTI

    kind = KIND

    def unwrap(self, stanza: dict, core_digest: bytes) -> bytes:
        check_stanza(stanza)
        t = _tss()
        try:
            public, _ = t.TPM2B_PUBLIC.unmarshal(unb64(stanza, "public"))
            duplicate, _ = t.TPM2B_PRIVATE.unmarshal(unb64(stanza, "duplicate"))
            seed, _ = t.TPM2B_ENCRYPTED_SECRET.unmarshal(unb64(stanza, "seed"))
            t.TPML_PCR_SELECTION.parse(stanza["pcrs"])
        except Exception as exc:  # the TSS raises its own (and builtin) error types for malformed blobs
            raise KeyWrapStanzaError(f"tpm2 stanza: sealed key or PCR selection malformed ({exc}); the package is damaged") from exc
        with _esapi(self.tcti) as ctx:
            parent, parent_public = _storage_key(ctx)
            try:
                if bytes(parent_public.get_name()).hex() != stanza.get("parent_name"):
                    raise DeviceError(
                        f"package is sealed to the TPM of {stanza.get('device_id')}, not to this TPM; "
                        "it only opens on the enrolled device"
                    )
                try:
                    private = ctx.import_(parent, t.TPM2B_DATA(), public, duplicate, seed, t.TPMT_SYM_DEF_OBJECT(algorithm=t.TPM2_ALG.NULL))
                    sealed = ctx.load(parent, private, public)
                except t.TSS2_Exception as exc:
                    raise DeviceError(f"this TPM cannot import the package's sealed key ({exc})") from exc
                session = _pcr_policy(ctx, stanza["pcrs"], t.TPM2_SE.POLICY)
                try:
                    kek = bytes(ctx.unseal(sealed, session1=session))
                except t.TSS2_Exception as exc:
                    raise DeviceError(
                        f"the TPM refuses to unseal: PCRs {stanza.get('pcrs')} no longer hold the enrolled values "
                        f"(firmware or boot chain changed?); re-enrol the device and ask for a new package ({exc})"
                    ) from exc
                finally:
                    ctx.flush_context(session)
                    ctx.flush_context(sealed)
            finally:
                ctx.flush_context(parent)
        data_key = open_sealed(stanza, kek, core_digest)
        if data_key is None:
            raise DeviceError("the TPM-sealed key does not open this package's stanza (manifest altered?)")
        return data_key
