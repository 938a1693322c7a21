"""The key file: encryption, integrity checks, named errors, atomic writes."""

from __future__ import annotations

import json
import os
import stat

import pytest

import tracemark as tm
from tracemark.errors import FormatVersionError, KeyFileError, TamperedError, WrongPassphraseError


@pytest.fixture(scope="module")
def key(digits) -> tm.WatermarkKey:
    return tm.WatermarkKey.generate("content", images=digits.x_train, labels=digits.y_train, n_triggers=20, seed=b"k" * 32)


def test_plain_round_trip_and_owner_only_permissions(tmp_path, key):
    path = key.save(tmp_path / "a.key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = tm.WatermarkKey.load(path)
    assert again.commitment() == key.commitment()
    assert again.triggers().sha256() == key.triggers().sha256()


def test_encrypted_round_trip_hides_the_seed(tmp_path, key):
    path = key.save(tmp_path / "a.key", passphrase="correct horse")
    raw = path.read_text()
    assert key.seed.hex() not in raw and '"key"' not in raw
    assert key.commitment() in raw  # the commitment is public
    assert tm.WatermarkKey.load(path, "correct horse").commitment() == key.commitment()


def test_wrong_or_missing_passphrase(tmp_path, key):
    path = key.save(tmp_path / "a.key", passphrase="correct horse")
    with pytest.raises(WrongPassphraseError, match="wrong passphrase"):
        tm.WatermarkKey.load(path, "battery staple")
    with pytest.raises(WrongPassphraseError, match="encrypted"):
        tm.WatermarkKey.load(path)


def test_truncated_and_corrupt_files(tmp_path, key):
    path = key.save(tmp_path / "a.key")
    raw = path.read_bytes()
    (tmp_path / "t.key").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(KeyFileError, match="corrupt or truncated"):
        tm.WatermarkKey.load(tmp_path / "t.key")
    (tmp_path / "b.key").write_bytes(b"\x00\xff" * 50)
    with pytest.raises(KeyFileError):
        tm.WatermarkKey.load(tmp_path / "b.key")
    with pytest.raises(KeyFileError, match="no key file"):
        tm.WatermarkKey.load(tmp_path / "missing.key")


def test_edited_key_body_is_refused(tmp_path, key):
    path = key.save(tmp_path / "a.key")
    doc = json.loads(path.read_text())
    doc["key"]["params"]["opacity"] = 0.5
    path.write_text(json.dumps(doc))
    with pytest.raises(TamperedError, match="commitment"):
        tm.WatermarkKey.load(path)


def test_edited_encrypted_file_is_refused(tmp_path, key):
    path = key.save(tmp_path / "a.key", passphrase="pw")
    doc = json.loads(path.read_text())
    doc["commitment"] = "0" * 64  # header is bound as associated data
    path.write_text(json.dumps(doc))
    with pytest.raises(WrongPassphraseError, match="altered"):
        tm.WatermarkKey.load(path, "pw")


def test_unknown_version(tmp_path, key):
    path = key.save(tmp_path / "a.key")
    doc = json.loads(path.read_text())
    doc["version"] = 99
    path.write_text(json.dumps(doc))
    with pytest.raises(FormatVersionError, match="99"):
        tm.WatermarkKey.load(path)


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, key, monkeypatch):
    path = key.save(tmp_path / "a.key")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    other = tm.WatermarkKey.generate("abstract", num_classes=10, input_shape=(1, 8, 8), n_triggers=5)
    with pytest.raises(OSError, match="disk full"):
        other.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.key"]
