"""The customer registry: commitments only, no duplicates, bound to its key."""

from __future__ import annotations

import sqlite3

import pytest

import tracemark as tm
from tracemark.errors import FormatVersionError
from tracemark.fingerprint import (
    CustomersFileError,
    DuplicateCustomerError,
    FingerprintScheme,
    Registry,
    RegistryError,
    RegistryKeyMismatchError,
    read_customers_file,
)


@pytest.fixture
def scheme(models) -> FingerprintScheme:
    return FingerprintScheme.from_key(models.key)


def test_create_add_reopen(tmp_path, scheme):
    path = tmp_path / "reg.sqlite"
    reg = Registry.create(path, scheme)
    record = reg.add(scheme, "acme")
    reg.add(scheme, "globex")
    assert record.code_commitment == scheme.code_commitment("acme")
    reg.set_copy("acme", "copies/acme.safetensors", "ab" * 32, {"steps": 10})
    again = Registry.open(path)
    assert again.customers() == ["acme", "globex"] and len(again) == 2
    acme = again.records()[0]
    assert acme.model_sha256 == "ab" * 32 and acme.report == {"steps": 10}
    assert again.scheme(scheme.key).n_drawings == scheme.n_drawings
    assert again.check_codes(scheme) == []
    assert path.stat().st_mode & 0o077 == 0
    with pytest.raises(RegistryError, match="exists"):
        Registry.create(path, scheme)


def test_no_secret_in_the_registry(tmp_path, scheme):
    reg = Registry.create(tmp_path / "reg.sqlite", scheme)
    reg.add(scheme, "acme")
    raw = (tmp_path / "reg.sqlite").read_bytes()
    assert scheme.customer_secret("acme").hex().encode() not in raw
    assert scheme.key.seed.hex().encode() not in raw and scheme.key.seed not in raw


def test_duplicates_and_unknown_customers(tmp_path, scheme):
    reg = Registry.create(tmp_path / "reg.sqlite", scheme)
    reg.add(scheme, "acme")
    with pytest.raises(DuplicateCustomerError):
        reg.add(scheme, "acme")
    with pytest.raises(RegistryError, match="not in"):
        reg.set_copy("nobody", "x", "y")


def test_key_mismatch_and_tampered_commitment(tmp_path, scheme, models):
    path = tmp_path / "reg.sqlite"
    reg = Registry.create(path, scheme)
    reg.add(scheme, "acme")
    other = tm.WatermarkKey.generate("content", images=models.data.x_train, labels=models.data.y_train,
                                     n_triggers=100, seed=bytes(range(2, 34)))
    with pytest.raises(RegistryKeyMismatchError):
        reg.scheme(other)
    with pytest.raises(RegistryKeyMismatchError):
        reg.add(FingerprintScheme.from_key(other), "globex")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE customers SET code_commitment = ? WHERE id = 'acme'", ("0" * 64,))
    assert reg.check_codes(scheme) == ["acme"]


def test_not_a_registry(tmp_path):
    (tmp_path / "junk.sqlite").write_bytes(b"not sqlite at all" * 10)
    with pytest.raises(RegistryError):
        Registry.open(tmp_path / "junk.sqlite")
    with pytest.raises(RegistryError, match="no customer registry"):
        Registry.open(tmp_path / "missing.sqlite")


def test_future_version_refused(tmp_path, scheme):
    path = tmp_path / "reg.sqlite"
    Registry.create(path, scheme)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE name = 'version'")
    with pytest.raises(FormatVersionError):
        Registry.open(path)


def test_customers_file(tmp_path):
    good = tmp_path / "customers.txt"
    good.write_text("# our customers\nacme\n\nglobex  # since 2025\n")
    assert read_customers_file(good) == ["acme", "globex"]
    for text, match in (("acme\nacme\n", "twice"), ("# nobody\n", "no customer ids"), ("a/b\n", "invalid")):
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        with pytest.raises(CustomersFileError, match=match):
            read_customers_file(bad)
    with pytest.raises(CustomersFileError, match="no customers file"):
        read_customers_file(tmp_path / "missing.txt")
