"""Finding 1 (and a new-user item): a hostile ``.pt2`` runs no code anywhere tracemark opens one.

Each crafted archive first proves itself live against a plain ``torch.export.load`` (its marker file
appears), then must be refused, with the marker absent, by load_target (verify), the verify and serve
commands, packing, and loading or serving a package that holds it.
"""

from __future__ import annotations

import io
import subprocess
import zipfile
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import torch

import tracemark as tm
from tracemark.errors import UnsafeFileError
from tracemark.package import Licence, OutputPolicy, RecipientKey, RecipientWrap, VendorKey, load_package, pack_model

from tests.security import _pt2

NOW = datetime.now(timezone.utc)


def _licence() -> Licence:
    return Licence("acme", NOW - timedelta(days=1), NOW + timedelta(days=30), (), OutputPolicy("label"))


def _open(data: bytes, tmp_path: Path):
    path = tmp_path / "suspect.pt2"
    path.write_bytes(data)
    return tm.load_target(path)


@pytest.fixture(scope="module")
def vendor() -> VendorKey:
    return VendorKey.generate()


@pytest.mark.parametrize("kind", sorted(_pt2.PAYLOADS))
def test_each_crafted_archive_runs_its_payload_under_plain_torch(tmp_path, kind):
    marker = tmp_path / "ran"
    data = _pt2.PAYLOADS[kind](str(marker))
    try:
        torch.export.load(io.BytesIO(data)).module()(torch.rand(2, *_pt2.INPUT_SHAPE))
    except Exception:  # noqa: BLE001 - the payload runs before torch notices the archive is odd
        pass
    assert marker.exists(), "the crafted archive is not hostile: the test below would prove nothing"


@pytest.mark.parametrize("kind", sorted(_pt2.PAYLOADS))
def test_load_target_refuses_each_payload_and_runs_nothing(tmp_path, kind):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt2"
    path.write_bytes(_pt2.PAYLOADS[kind](str(marker)))
    if kind == "guard_code":  # guard code is never read: torch regenerates guards from the checked graph
        target = tm.load_target(path)
        target.predict(np.random.default_rng(0).random((3, *_pt2.INPUT_SHAPE), dtype=np.float32))
    else:
        with pytest.raises(UnsafeFileError, match="refuses|not plain|not a sympy"):
            tm.load_target(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("member", "words"),
    [("data/aotinductor/model/model.so", "native code"), ("data/weights/model.pt", "pickled"), ("models/second.json", "second program"),
     ("data/constants/custom_obj_0", "custom or opaque")],
)
def test_members_plain_save_never_writes_are_refused_by_name(tmp_path, member, words):
    with pytest.raises(UnsafeFileError, match=words):
        _open(_pt2.with_member(member), tmp_path)


@pytest.mark.parametrize("target", ["torch.load", "torch.hub.load", "builtins.exec", "torch.ops.aten.from_file.default", "#evil:op", "torch.ops.mylib.custom.default"])
def test_graph_calls_outside_aten_are_refused(tmp_path, target):
    with pytest.raises(UnsafeFileError, match="not an operator tracemark admits"):
        _open(_pt2.with_target(target), tmp_path)


def test_compressed_duplicate_and_encrypted_members_are_refused(tmp_path):
    data = _pt2.genuine()
    deflated = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(UnsafeFileError, match="compressed"):
        _open(deflated.getvalue(), tmp_path)
    duplicated = io.BytesIO(_pt2.rewrite(data, lambda m, root: None))
    with zipfile.ZipFile(duplicated, "a") as archive, pytest.warns(UserWarning):
        archive.writestr(archive.infolist()[0].filename, b"again")
    with pytest.raises(UnsafeFileError, match="appears twice"):
        _open(duplicated.getvalue(), tmp_path)
    encrypted = bytearray(data)
    end_record = data.rindex(b"PK\x05\x06")
    central = int.from_bytes(data[end_record + 16 : end_record + 20], "little")
    assert data[central : central + 4] == b"PK\x01\x02"
    encrypted[central + 8] |= 0x1  # the first central-directory entry's general-purpose flags
    with pytest.raises(UnsafeFileError, match="encrypted"):
        _open(bytes(encrypted), tmp_path)


def test_honest_programs_load_and_answer_like_the_source_module(tmp_path):
    module = _pt2.tiny_module()
    x = torch.rand(5, *_pt2.INPUT_SHAPE)
    for dynamic in (True, False):
        path = tmp_path / f"honest-{dynamic}.pt2"
        path.write_bytes(_pt2.genuine(dynamic=dynamic))
        target = tm.load_target(path)
        assert target.input_shape == _pt2.INPUT_SHAPE
        answers = target.predict(x.numpy())  # five inputs: a fixed batch of 2 is run in chunks and padded
        np.testing.assert_array_equal(answers.labels, module(x).argmax(1).numpy())


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracemark", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_verify_and_serve_commands_refuse_with_one_line(tmp_path, models):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt2"
    evil.write_bytes(_pt2.pickled_weight(str(marker)))
    models.key.save(tmp_path / "k.key")
    verify = _cli("verify", "--key", str(tmp_path / "k.key"), "--model", str(evil), cwd=tmp_path)
    serve = _cli("serve", str(evil), "--port", "1", cwd=tmp_path)
    for result in (verify, serve):
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr and "use_pickle" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not marker.exists()


def test_pack_refuses_and_a_package_holding_one_runs_nothing(tmp_path, vendor, monkeypatch):
    marker = tmp_path / "ran"
    evil = _pt2.pickled_weight(str(marker))
    with pytest.raises(UnsafeFileError, match="use_pickle"):
        pack_model(evil, tmp_path / "refused.tmpkg", vendor=vendor, licence=_licence(), wraps=[RecipientWrap(vendor.public)])
    assert not (tmp_path / "refused.tmpkg").exists()

    import tracemark.package.build as build

    monkeypatch.setattr(build, "check_exported_archive", lambda *a, **k: None)  # a vendor's older tracemark, or a forger
    pack_model(evil, tmp_path / "evil.tmpkg", vendor=vendor, licence=_licence(), wraps=[RecipientWrap(vendor.public)])
    monkeypatch.undo()
    from tracemark.serve.model import from_package

    with pytest.raises(UnsafeFileError, match="use_pickle"):
        load_package(tmp_path / "evil.tmpkg", RecipientKey.from_vendor(vendor), vendor_key=vendor.public, now=NOW)
    with pytest.raises(UnsafeFileError, match="use_pickle"):
        from_package(tmp_path / "evil.tmpkg", RecipientKey.from_vendor(vendor), vendor_key=vendor.public)
    assert not marker.exists()
