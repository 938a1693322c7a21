"""Crash and concurrency: SIGKILL mid-append, torn tails, two processes appending at once."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracemark.ledger import Ledger, OwnerIdentity, verify_ledger
from tracemark.ledger.errors import TornTailError

from .conftest import PASSPHRASE

CHILD = """
import sys
from tracemark.ledger import Ledger, OwnerIdentity
ledger = Ledger.open(sys.argv[1], OwnerIdentity.load(sys.argv[2], sys.argv[3]))
name, count = sys.argv[4], int(sys.argv[5])
print("ready", flush=True)
sys.stdin.readline()
for i in range(count):
    entry = ledger.append("note", {"writer": name, "i": i, "pad": "x" * 2000})
    print("ack", entry.seq, name, i, flush=True)
"""
ACK = re.compile(r"ack (\d+) \S+ \d+\n")
"""A complete acknowledgement line of CHILD (a line cut short by the kill acknowledges nothing)."""


def _spawn(ledger_dir: Path, key_path: Path, name: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(ledger_dir), str(key_path), PASSPHRASE, name, str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"


@pytest.fixture
def owner_file(tmp_path: Path, owner: OwnerIdentity) -> Path:
    return owner.save(tmp_path / "owner.pem", PASSPHRASE)


def test_concurrent_appenders_make_one_valid_chain(tmp_path: Path, owner: OwnerIdentity, owner_file: Path) -> None:
    n = 40
    ledger = Ledger.init(tmp_path / "ledger", owner)
    procs = [_spawn(ledger.directory, owner_file, name, n) for name in ("A", "B")]
    for proc in procs:
        _wait_ready(proc)
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        assert out.count("ack") == n
    report = verify_ledger(ledger.directory, expected_key=owner.public_key, strict=True, trust_any_authority=True)
    assert report.entries == 2 * n + 1
    written = sorted((e.payload["writer"], e.payload["i"]) for e in ledger.entries()[1:])
    assert written == sorted((w, i) for w in "AB" for i in range(n))


def test_sigkill_mid_append_never_loses_an_acknowledged_entry(tmp_path: Path, owner: OwnerIdentity, owner_file: Path) -> None:
    ledger = Ledger.init(tmp_path / "ledger", owner)
    kill_delays = random.Random(7).choices([0.0, 0.0005, 0.001, 0.002, 0.004, 0.008], k=20)
    for round_, delay in enumerate(kill_delays):  # 20 kills at random moments
        proc = _spawn(ledger.directory, owner_file, f"K{round_}", 10_000)
        _wait_ready(proc)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        acked = [proc.stdout.readline() for _ in range(1 + round_ % 5)]
        time.sleep(delay)  # kill at different points of an append
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        acked += proc.stdout.read().splitlines(keepends=True)  # through the same buffer as readline: no line lost
        proc.stdin.close()
        proc.stdout.close()
        acked_seqs = {int(m.group(1)) for line in acked if (m := ACK.fullmatch(line))}
        assert len(acked_seqs) >= 1 + round_ % 5  # the acknowledgements read before the kill
        report = verify_ledger(ledger.directory, trust_any_authority=True)  # the complete prefix verifies ...
        on_disk = {e.seq for e in Ledger.open(ledger.directory).read(allow_torn_tail=True)[0]}
        assert acked_seqs <= on_disk  # ... and contains every acknowledged entry
        if report.torn_tail_bytes:  # a torn tail is reported, never silently dropped
            assert "torn tail" in report.warnings[0]
    # the next append repairs (and records) any torn tail; the result verifies strictly
    Ledger.open(ledger.directory, owner).append("note", {"after": "kills"})
    verify_ledger(ledger.directory, strict=True, trust_any_authority=True)


def test_torn_tail_is_reported_then_recorded_on_next_append(tmp_path: Path, owner: OwnerIdentity) -> None:
    ledger = Ledger.init(tmp_path / "ledger", owner)
    ledger.append("note", {"i": 1})
    torn = b'{"event":"note","format":"tracemark-ledger-en'
    with open(ledger.path, "ab") as handle:  # what a power cut mid-write can leave
        handle.write(torn)
    report = verify_ledger(ledger.directory, trust_any_authority=True)
    assert report.entries == 2 and report.torn_tail_bytes == len(torn)
    assert "torn tail" in str(report)
    with pytest.raises(TornTailError):
        verify_ledger(ledger.directory, strict=True, trust_any_authority=True)
    entry = ledger.append("note", {"i": 2})
    entries = ledger.entries()
    recovered = entries[2]
    assert recovered.event == "tail-recovered" and recovered.payload["length"] == len(torn)
    assert (ledger.directory / recovered.payload["saved_as"]).read_bytes() == torn
    assert entry.seq == 3 and entries[-1] == entry
    verify_ledger(ledger.directory, strict=True, trust_any_authority=True)
