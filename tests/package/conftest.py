"""Fixtures for package tests: a vendor key, licences, small models and packages, a software TPM."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from tracemark.data.models import build_model
from tracemark.package import Licence, OutputPolicy, PassphraseWrap, RecipientWrap, VendorKey, pack_model

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
PASSPHRASE = "correct horse battery staple"
FAST_N = 2**10  # scrypt cost for tests only


@pytest.fixture(autouse=True)
def _no_ambient_pins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Pins come only from what each test passes: no $TRACEMARK_VENDOR_PUB, an empty config directory."""
    monkeypatch.delenv("TRACEMARK_VENDOR_PUB", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))


def make_licence(devices: tuple[str, ...] = (), days: int = 30, policy: OutputPolicy | None = None) -> Licence:
    return Licence("acme-gmbh", NOW - timedelta(days=1), NOW + timedelta(days=days), devices, policy or OutputPolicy("top_k", 3, 2))


@pytest.fixture(scope="session")
def vendor() -> VendorKey:
    return VendorKey.generate()


@pytest.fixture(scope="session")
def model() -> torch.nn.Module:
    return build_model("lenet", (1, 28, 28), 10, seed=3).eval()


@pytest.fixture(scope="session")
def tiny_safetensors() -> bytes:
    """~1 KB of safetensors (no architecture): small enough to flip every byte of its package."""
    gen = torch.Generator().manual_seed(0)
    return save({"w": torch.randn(12, 16, generator=gen), "b": torch.arange(40, dtype=torch.int64)})


@pytest.fixture()
def module_package(tmp_path: Path, vendor: VendorKey, model: torch.nn.Module) -> Path:
    out = tmp_path / "model.tmpkg"
    pack_model(
        model, out, vendor=vendor, licence=make_licence(),
        wraps=[PassphraseWrap(PASSPHRASE, n=FAST_N), RecipientWrap(vendor.public)], chunk_size=64 << 10,
    )
    return out


@pytest.fixture()
def tiny_package(tmp_path: Path, vendor: VendorKey, tiny_safetensors: bytes) -> Path:
    out = tmp_path / "tiny.tmpkg"
    pack_model(tiny_safetensors, out, vendor=vendor, licence=make_licence(), wraps=[RecipientWrap(vendor.public)], chunk_size=256)
    return out


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of loopback ports for swtpm")


@pytest.fixture(scope="session")
def swtpm(tmp_path_factory: pytest.TempPathFactory):
    """TCTI string of a throw-away software TPM on loopback, stopped after the session."""
    if shutil.which("swtpm") is None:
        pytest.skip("swtpm is not installed (Debian: apt-get install swtpm swtpm-tools; see .ci/system-deps.sh)")
    try:
        import tpm2_pytss
    except ImportError:
        pytest.skip("tpm2-pytss is not installed (needs libtss2-dev + pkg-config, then pip install tpm2-pytss)")
    state = tmp_path_factory.mktemp("swtpm-state")
    port = _free_port_pair()
    proc = subprocess.Popen(
        ["swtpm", "socket", "--tpm2",
         "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
         "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
         "--flags", "not-need-init,startup-clear", "--tpmstate", f"dir={state}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    tcti = f"swtpm:host=127.0.0.1,port={port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"swtpm exited early: {proc.stderr.read().decode(errors='replace') if proc.stderr else ''}")
            try:
                with tpm2_pytss.ESAPI(tcti):
                    break
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError("swtpm did not come up within 10 s")
                time.sleep(0.1)
        yield tcti
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
