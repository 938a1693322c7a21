"""Client store, token buckets, output-policy caps and the audit log, without HTTP."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from tracemark.package.licence import OutputPolicy
from tracemark.serve import (
    Allowance,
    AuditLog,
    ClientStore,
    MemoryLimiter,
    RateLimitedError,
    RevokedApiKeyError,
    ServeConfigError,
    SqliteLimiter,
    UnknownApiKeyError,
    UnknownClientError,
    restrict,
)
from tracemark.serve.ratelimit import take


def test_api_keys_are_stored_only_as_hashes(tmp_path: Path) -> None:
    store = ClientStore(tmp_path / "c.sqlite")
    issued = store.add("acme", OutputPolicy("top_k", 2, 1), rate=5.0, burst=10.0)
    assert issued.token.startswith("tmk_") and len(issued.token) > 40 and issued.token in str(issued)
    raw = (tmp_path / "c.sqlite").read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("c.sqlite-*"))
    assert issued.token.encode() not in raw
    assert (tmp_path / "c.sqlite").stat().st_mode & 0o077 == 0
    assert store.authenticate(issued.token) == issued.client
    assert issued.token not in str(store.list()[0]) and "api_key" not in store.list()[0].to_dict()
    with pytest.raises(UnknownApiKeyError):
        store.authenticate(issued.token + "x")
    with pytest.raises(ServeConfigError, match="already exists"):
        store.add("acme")
    with pytest.raises(ServeConfigError, match="client name"):
        store.add("../etc")
    store.revoke("acme")
    with pytest.raises(RevokedApiKeyError):
        ClientStore(tmp_path / "c.sqlite").authenticate(issued.token)  # another connection sees it
    with pytest.raises(UnknownClientError):
        store.revoke("nobody")


def test_a_revocation_by_another_process_reaches_a_cached_key_on_its_next_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tracemark.serve.clients as clients_module

    server, cli = ClientStore(tmp_path / "c.sqlite"), ClientStore(tmp_path / "c.sqlite")  # two processes' views
    token = cli.add("acme").token
    assert server.authenticate(token).name == "acme"  # now cached by the server
    before = server.changes.value
    cli.revoke("acme")
    assert server.changes.value == before + 1
    with pytest.raises(RevokedApiKeyError):
        server.authenticate(token)

    other = cli.add("globex").token
    assert server.authenticate(other).active
    with sqlite3.connect(tmp_path / "c.sqlite") as conn:  # a change made around the API does not bump the counter
        conn.execute("UPDATE clients SET revoked = '2026-01-01T00:00:00Z' WHERE name = 'globex'")
    assert server.authenticate(other).active  # the cached record, for at most CACHE_S
    monkeypatch.setattr(clients_module, "CACHE_S", 0.0)
    with pytest.raises(RevokedApiKeyError):
        server.authenticate(other)


def test_token_bucket_arithmetic() -> None:
    allowance = Allowance(rate=10.0, burst=20.0)
    assert take(20.0, 0.0, 0.0, 15, allowance) == (5.0, 0.0)
    tokens, wait = take(5.0, 0.0, 0.0, 15, allowance)
    assert tokens == 5.0 and wait == pytest.approx(1.0)
    assert take(5.0, 0.0, 1.0, 15, allowance) == (0.0, 0.0)  # refilled 10 in one second
    assert take(0.0, 0.0, 100.0, 1, allowance) == (19.0, 0.0)  # capped at burst
    assert take(3.0, 1e9, 5.0, 1, allowance) == (2.0, 0.0)  # clock went backwards: no refill, no lock-out


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_limiters_refuse_over_rate_and_sqlite_buckets_are_shared(tmp_path: Path, kind: str) -> None:
    allowance = Allowance(rate=0.5, burst=10.0)
    make = (lambda: SqliteLimiter(tmp_path / "l.sqlite")) if kind == "sqlite" else MemoryLimiter
    first = make()
    first.charge("c1", 6, allowance)
    other = make() if kind == "sqlite" else first  # a second worker process opens the same file
    with pytest.raises(RateLimitedError) as info:
        other.charge("c1", 6, allowance)
    assert info.value.retry_after == pytest.approx(4.0, abs=0.1)
    other.charge("c2", 6, allowance)  # buckets are per client


def test_policy_caps() -> None:
    top3 = OutputPolicy("top_k", 3, 2)
    assert restrict(OutputPolicy("probabilities"), None) == OutputPolicy("probabilities")
    assert restrict(OutputPolicy("probabilities", None, 4), top3) == top3
    assert restrict(OutputPolicy("top_k", 5), top3) == top3
    assert restrict(OutputPolicy("top_k", 1, 1), top3) == OutputPolicy("top_k", 1, 1)
    assert restrict(OutputPolicy("probabilities"), OutputPolicy("label")) == OutputPolicy("label")
    assert restrict(OutputPolicy("label"), OutputPolicy("probabilities", None, 2)) == OutputPolicy("label")
    assert restrict(OutputPolicy("probabilities"), OutputPolicy("probabilities", None, 2)) == OutputPolicy("probabilities", None, 2)


def test_audit_retention_and_export(tmp_path: Path) -> None:
    store = ClientStore(tmp_path / "c.sqlite")
    client = store.add("auditee").client
    log = AuditLog(tmp_path / "a.sqlite", retention_days=30)
    x = np.zeros((3, 1, 8, 8), dtype=np.float32)
    log.record(client, "r1", x, [{"label": 1}] * 3, "label")
    log.flush()
    conn = sqlite3.connect(tmp_path / "a.sqlite")
    with conn:
        conn.execute("UPDATE queries SET time = '2000-01-01T00:00:00.000000Z' WHERE batch_index = 0")
    assert log.purge() == 1 and log.count() == 2
    out = log.export(tmp_path / "audit.json", client_id=client.id)
    doc = json.loads((tmp_path / "audit.json").read_text())
    assert doc["format"] == "tracemark-serve-audit" and doc["rows"] == out.rows == 2
    assert [r["batch_index"] for r in doc["records"]] == [1, 2] and doc["records"][0]["answer"] == {"label": 1}
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    assert log.export(tmp_path / "none.json", since=later).rows == 0
    with pytest.raises(ServeConfigError):
        AuditLog(tmp_path / "a.sqlite", retention_days=0)


def test_stores_refuse_files_that_are_not_sqlite(tmp_path: Path) -> None:
    bad = tmp_path / "not.sqlite"
    bad.write_bytes(b"this is not a database, it is a text file " * 100)
    with pytest.raises(ServeConfigError, match="not a usable SQLite database"):
        ClientStore(bad)
    with pytest.raises(ServeConfigError, match="does not exist"):
        AuditLog(tmp_path / "missing-dir" / "a.sqlite")
