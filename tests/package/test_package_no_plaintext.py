"""Loading never writes a file: no open-for-writing anywhere, nothing new in the temp or package dirs."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from tests.package.conftest import NOW, PASSPHRASE
from tracemark.package import Passphrase, load_package

_WRITES: list[str] | None = None
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _hook(event: str, args: tuple) -> None:
    if _WRITES is None:
        return
    if event == "open":
        path, mode, flags = args
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & _WRITE_FLAGS):
            _WRITES.append(f"open {path!r} mode={mode!r} flags={flags!r}")
    elif event in ("os.rename", "os.replace", "os.link", "os.symlink", "os.mkdir", "shutil.copyfile", "tempfile.mkstemp", "tempfile.mkdtemp"):
        _WRITES.append(f"{event} {args!r}")


sys.addaudithook(_hook)


def _snapshot(*dirs: Path) -> set[tuple[str, int, int]]:
    out = set()
    for d in dirs:
        for root, _, files in os.walk(d):
            for name in files:
                p = Path(root, name)
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                out.add((str(p), st.st_size, st.st_mtime_ns))
    return out


def test_load_writes_no_file(module_package: Path, vendor, model: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    global _WRITES
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    watched = (scratch, module_package.parent, Path(tempfile.gettempdir()))
    before = _snapshot(*watched)
    _WRITES = []
    try:
        loaded = load_package(module_package, Passphrase(PASSPHRASE), vendor_key=vendor.public, now=NOW)
        x = torch.randn(2, 1, 28, 28)
        assert torch.equal(loaded.model(x), model(x))
    finally:
        writes, _WRITES = _WRITES, None
    assert writes == []
    assert _snapshot(*watched) == before


def test_the_watch_does_catch_a_write(tmp_path: Path) -> None:
    """The audit hook is not blind: an ordinary write is caught."""
    global _WRITES
    _WRITES = []
    try:
        (tmp_path / "leak.bin").write_bytes(b"weights")
    finally:
        writes, _WRITES = _WRITES, None
    assert len(writes) == 1 and "leak.bin" in writes[0]
