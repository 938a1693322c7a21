"""Packages round-trip every model format and unlocker, and keep the manifest and licence readable."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.package.conftest import NOW, PASSPHRASE, FAST_N, make_licence
from tracemark.package import (
    OutputPolicy,
    Passphrase,
    PassphraseWrap,
    RecipientKey,
    RecipientWrap,
    UntrustedSignerWarning,
    VendorKey,
    inspect_package,
    load_package,
    pack_model,
    unpack_package,
)
from tracemark.data.models import model_bytes


def test_module_roundtrip_passphrase_and_recipient(module_package: Path, vendor: VendorKey, model: torch.nn.Module) -> None:
    x = torch.randn(4, 1, 28, 28)
    for unlocker, used in ((Passphrase(PASSPHRASE), "passphrase"), (RecipientKey.from_vendor(vendor), "x25519")):
        loaded = load_package(module_package, unlocker, vendor_key=vendor.public, now=NOW)
        assert isinstance(loaded.model, torch.nn.Module)
        assert loaded.unlocked_with.startswith(used)
        assert torch.equal(loaded.model(x), model(x))
    assert loaded.output_policy() == OutputPolicy("top_k", 3, 2)
    assert loaded.to_dict()["kind"] == "torch" and loaded.signer_pinned


def test_inspect_reads_manifest_and_licence_without_any_key(module_package: Path, vendor: VendorKey, model: torch.nn.Module) -> None:
    info = inspect_package(module_package, vendor.public)
    data = model_bytes(model)
    assert info.manifest.model.size == len(data)
    assert info.licence.customer_id == "acme-gmbh"
    assert info.manifest.model.architecture == {"arch": "lenet", "input_shape": [1, 28, 28], "num_classes": 10} or \
        info.manifest.model.architecture == {"arch": "lenet", "input_shape": (1, 28, 28), "num_classes": 10}
    assert {w["type"] for w in info.manifest.wraps} == {"passphrase", "x25519"}
    assert "acme-gmbh" in str(info) and info.signer_pinned
    assert "chunk tags against the signed digest" in str(info) and "chunk contents" in str(info)  # says what was not checked
    with pytest.warns(UntrustedSignerWarning, match="not pinned"):
        assert not inspect_package(module_package, trust_any_signer=True).signer_pinned


def test_safetensors_without_architecture_gives_zero_copy_tensors(tmp_path: Path, vendor: VendorKey, tiny_safetensors: bytes) -> None:
    out = tmp_path / "t.tmpkg"
    pack_model(tiny_safetensors, out, vendor=vendor, licence=make_licence(), wraps=[RecipientWrap(vendor.public)], chunk_size=100)
    loaded = load_package(out, RecipientKey.from_vendor(vendor), vendor_key=vendor.public, now=NOW)
    from safetensors.torch import load

    expected = load(tiny_safetensors)
    assert loaded.model is None and loaded.state_dict is not None
    assert set(loaded.state_dict) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(loaded.state_dict[name], tensor)
    # Tensors are views of one decrypted buffer, not copies.
    import json

    header = json.loads(tiny_safetensors[8 : 8 + int.from_bytes(tiny_safetensors[:8], "little")])
    gap = header["b"]["data_offsets"][0] - header["w"]["data_offsets"][0]
    assert loaded.state_dict["b"].data_ptr() - loaded.state_dict["w"].data_ptr() == gap


def test_onnx_package_gives_session(tmp_path: Path, vendor: VendorKey, model: torch.nn.Module) -> None:
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.randn(1, 1, 28, 28),), buf, input_names=["x"], output_names=["y"], dynamo=False)
    src = tmp_path / "m.onnx"
    src.write_bytes(buf.getvalue())
    out = tmp_path / "o.tmpkg"
    result = pack_model(src, out, vendor=vendor, licence=make_licence(), wraps=[RecipientWrap(vendor.public)], chunk_size=10_000)
    assert result.model_format == "onnx" and result.model_id == "m"
    loaded = load_package(out, RecipientKey.from_vendor(vendor), vendor_key=vendor.public, now=NOW)
    x = torch.randn(1, 1, 28, 28)
    (y,) = loaded.session.run(None, {"x": x.numpy()})
    np.testing.assert_allclose(y, model(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    import onnxruntime as ort

    (plain,) = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    assert np.array_equal(y, plain)  # bit-identical to the same ONNX model loaded plainly


def test_torch_export_package_gives_module(tmp_path: Path, vendor: VendorKey, model: torch.nn.Module) -> None:
    program = torch.export.export(model, (torch.randn(1, 1, 28, 28),))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    out = tmp_path / "e.tmpkg"
    result = pack_model(buf.getvalue(), out, vendor=vendor, licence=make_licence(), wraps=[RecipientWrap(vendor.public)])
    assert result.model_format == "torch.export"
    loaded = load_package(out, RecipientKey.from_vendor(vendor), vendor_key=vendor.public, now=NOW)
    x = torch.randn(1, 1, 28, 28)
    torch.testing.assert_close(loaded.model(x), model(x))


def test_unpack_writes_exact_model_and_warns(module_package: Path, vendor: VendorKey, tmp_path: Path, model: torch.nn.Module) -> None:
    out = tmp_path / "plain" / "m.safetensors"
    with pytest.warns(UserWarning, match="unprotected"):
        unpack_package(module_package, out, Passphrase(PASSPHRASE), vendor_key=vendor.public, now=NOW)
    import hashlib

    from tracemark.data.models import load_model

    assert hashlib.sha256(out.read_bytes()).hexdigest() == inspect_package(module_package, vendor.public).manifest.model.sha256
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(load_model(out)(x), model(x))
    assert out.stat().st_mode & 0o077 == 0


def test_failed_pack_leaves_no_file(tmp_path: Path, vendor: VendorKey, model: torch.nn.Module) -> None:
    class Exploding:
        kind = "passphrase"

        def stanza(self, data_key: bytes, core_digest: bytes) -> dict:
            raise KeyboardInterrupt

        def describe(self) -> str:
            return "boom"

    with pytest.raises(KeyboardInterrupt):
        pack_model(model, tmp_path / "x.tmpkg", vendor=vendor, licence=make_licence(), wraps=[PassphraseWrap(PASSPHRASE, n=FAST_N), Exploding()])
    assert list(tmp_path.iterdir()) == []
