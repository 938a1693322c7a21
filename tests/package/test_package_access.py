"""Who may open a package: passphrase, recipient key, licence window and devices, machine binding."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from tests.package.conftest import NOW, PASSPHRASE, FAST_N, make_licence
from tracemark._util.canonical import canonical_json
from tracemark.errors import DeviceError, LicenceError, WrongPassphraseError
from tracemark.package import (
    KeyUnwrapError,
    MachineSecret,
    MachineWrap,
    Passphrase,
    PassphraseWrap,
    RecipientKey,
    RecipientWrap,
    VendorKey,
    UntrustedSignerWarning,
    WrongPackagePassphraseError,
    WrongRecipientKeyError,
    device_id,
    enrol_device,
    load_package,
    pack_model,
)
from tracemark.package.format import MAGIC, read_container

HERE = b"3d1219c7c4c5404aaa1f6d2a48adfda4\x00"  # machine identities: id, NUL, product uuid
ELSEWHERE = b"0123456789abcdef0123456789abcdef\x00"


def test_wrong_passphrase_is_refused(module_package: Path, vendor: VendorKey) -> None:
    with pytest.raises(WrongPackagePassphraseError) as info:
        load_package(module_package, Passphrase("incorrect horse"), vendor_key=vendor.public, now=NOW)
    assert isinstance(info.value, WrongPassphraseError)


def test_wrong_recipient_key_is_refused(module_package: Path, vendor: VendorKey) -> None:
    with pytest.raises(WrongRecipientKeyError, match="use the matching private key"):
        load_package(module_package, RecipientKey.from_vendor(VendorKey.generate()), vendor_key=vendor.public, now=NOW)


def test_unlocker_of_a_kind_the_package_lacks(module_package: Path, vendor: VendorKey) -> None:
    with pytest.raises(KeyUnwrapError, match="opens with passphrase, x25519"):
        load_package(module_package, MachineSecret(HERE), vendor_key=vendor.public, now=NOW)


def test_any_matching_unlocker_among_several_opens(module_package: Path, vendor: VendorKey) -> None:
    loaded = load_package(module_package, [Passphrase("nope"), RecipientKey.from_vendor(vendor)], vendor_key=vendor.public, now=NOW)
    assert loaded.unlocked_with.startswith("x25519")


@pytest.mark.parametrize("when, match", [(NOW + timedelta(days=31), "expired"), (NOW - timedelta(days=2), "not valid before")])
def test_licence_window_is_enforced(module_package: Path, vendor: VendorKey, when, match: str) -> None:
    with pytest.raises(LicenceError, match=match):
        load_package(module_package, Passphrase(PASSPHRASE), vendor_key=vendor.public, now=when)


def test_licence_devices_are_enforced(tmp_path: Path, vendor: VendorKey, model) -> None:
    here, elsewhere = device_id(HERE), device_id(ELSEWHERE)
    out = tmp_path / "d.tmpkg"
    pack_model(model, out, vendor=vendor, licence=make_licence(devices=(here,)), wraps=[RecipientWrap(vendor.public)])
    key = RecipientKey.from_vendor(vendor)
    assert load_package(out, key, device_id=here, vendor_key=vendor.public, now=NOW).model is not None
    with pytest.raises(LicenceError, match="not among the licence's allowed devices"):
        load_package(out, key, device_id=elsewhere, vendor_key=vendor.public, now=NOW)


def test_machine_binding(tmp_path: Path, vendor: VendorKey, model) -> None:
    enrolment = enrol_device(identity=HERE)
    out = tmp_path / "m.tmpkg"
    pack_model(model, out, vendor=vendor, licence=make_licence(), wraps=[MachineWrap(enrolment)])
    assert load_package(out, MachineSecret(HERE), vendor_key=vendor.public, now=NOW).unlocked_with == f"machine {enrolment.device_id}"
    with pytest.raises(DeviceError, match="only be opened on the enrolled device"):
        load_package(out, MachineSecret(ELSEWHERE), vendor_key=vendor.public, now=NOW)
    saved = enrolment.save(tmp_path / "dev.json")
    assert saved.stat().st_mode & 0o077 == 0
    assert type(enrolment).load(saved) == enrolment


def test_resigned_licence_edit_breaks_the_key_binding(module_package: Path, tmp_path: Path) -> None:
    """A customer who extends their own licence and re-signs with their own key still cannot open it."""
    raw = module_package.read_bytes()
    with module_package.open("rb") as f:
        c = read_container(f.fileno(), "x")
    document = json.loads(c.manifest_bytes)
    document["licence"]["not_after"] = "2099-01-01T00:00:00Z"
    forger = VendorKey.generate()
    document["vendor"] = {"ed25519": forger.public.to_dict()["ed25519"], "key_id": forger.public.key_id}
    manifest = canonical_json(document)
    forged = raw[: c.payload_offset + c.payload_size] + manifest + forger.sign(manifest) + len(manifest).to_bytes(8, "little") + b"TMPKGEND"
    assert forged[: len(MAGIC)] == MAGIC
    path = tmp_path / "forged.tmpkg"
    path.write_bytes(forged)
    # Even with any signer trusted (pinning refuses it outright: tests/security/test_package.py), the key binding holds.
    with pytest.raises(WrongPackagePassphraseError), pytest.warns(UntrustedSignerWarning):
        load_package(path, Passphrase(PASSPHRASE), trust_any_signer=True, now=NOW + timedelta(days=365))


def test_passphrase_wrap_rejects_weak_settings() -> None:
    from tracemark.errors import PackageError

    with pytest.raises(PackageError):
        PassphraseWrap("")
    with pytest.raises(PackageError):
        PassphraseWrap(PASSPHRASE, n=1000)
    assert PassphraseWrap(PASSPHRASE, n=FAST_N).n == FAST_N
