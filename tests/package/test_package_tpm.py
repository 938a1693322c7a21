"""TPM 2.0 binding against a real software TPM (swtpm on loopback): seal, load, extend PCR, refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.package.conftest import NOW, make_licence
from tracemark.errors import DeviceError
from tracemark.package import DeviceEnrolment, TpmDevice, TpmWrap, enrol_device, enrol_tpm, load_package, pack_model

IDENTITY = b"feedfacefeedfacefeedfacefeedface\x00"


def _extend_pcr7(tcti: str) -> None:
    import tpm2_pytss as t

    with t.ESAPI(tcti) as ctx:
        value = t.TPMT_HA(hashAlg=t.TPM2_ALG.SHA256, digest=t.TPMU_HA(sha256=b"\x42" * 32))
        ctx.pcr_extend(t.ESYS_TR.PCR7, t.TPML_DIGEST_VALUES([value]))


def test_tpm_seal_load_then_pcr_change_refuses(swtpm: str, tmp_path: Path, vendor, model) -> None:
    enrolment = enrol_device(include_machine_secret=False, tpm=enrol_tpm(swtpm, "sha256:7"), identity=IDENTITY)
    enrolment = DeviceEnrolment.load(enrolment.save(tmp_path / "device.json"))  # as the vendor receives it
    assert enrolment.machine_secret is None and enrolment.tpm is not None
    out = tmp_path / "tpm.tmpkg"
    # The vendor seals without any TPM: only the enrolment's public data is used.
    pack_model(model, out, vendor=vendor, licence=make_licence(devices=(enrolment.device_id,)), wraps=[TpmWrap(enrolment)])
    loaded = load_package(out, TpmDevice(swtpm), vendor_key=vendor.public, device_id=enrolment.device_id, now=NOW)
    assert loaded.model is not None and loaded.unlocked_with.startswith("tpm2")
    _extend_pcr7(swtpm)
    with pytest.raises(DeviceError, match="PCRs sha256:7 no longer hold the enrolled values"):
        load_package(out, TpmDevice(swtpm), device_id=enrolment.device_id, vendor_key=vendor.public, now=NOW)


def test_tpm_package_for_another_tpm_is_refused(swtpm: str, tmp_path: Path, vendor, model) -> None:
    import tpm2_pytss as t

    real = enrol_tpm(swtpm, "sha256:0")
    # Another TPM's storage key: same template, different key material.
    other_pub, _ = t.TPM2B_PUBLIC.unmarshal(real.parent_public)
    from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    pem = generate_private_key(SECP256R1()).public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    foreign = t.TPM2B_PUBLIC.from_pem(pem, objectAttributes=other_pub.publicArea.objectAttributes,
                                      symmetric=other_pub.publicArea.parameters.eccDetail.symmetric)
    enrolment = enrol_device(include_machine_secret=False, identity=IDENTITY, tpm=type(real)(foreign.marshal(), real.pcrs, real.policy_digest))
    out = tmp_path / "other.tmpkg"
    pack_model(model, out, vendor=vendor, licence=make_licence(), wraps=[TpmWrap(enrolment)])
    with pytest.raises(DeviceError, match="not to this TPM"):
        load_package(out, TpmDevice(swtpm), vendor_key=vendor.public, now=NOW)


def test_unreachable_tpm_is_a_device_error(tmp_path: Path, vendor, model, swtpm: str) -> None:
    enrolment = enrol_device(include_machine_secret=False, tpm=enrol_tpm(swtpm, "sha256:1"), identity=IDENTITY)
    out = tmp_path / "t.tmpkg"
    pack_model(model, out, vendor=vendor, licence=make_licence(), wraps=[TpmWrap(enrolment)])
    with pytest.raises(DeviceError, match="cannot reach a TPM"):
        load_package(out, TpmDevice("swtpm:host=127.0.0.1,port=1"), vendor_key=vendor.public, now=NOW)
