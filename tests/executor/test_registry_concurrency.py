"""Processes writing one customer registry at once lose nothing, and a guarded write is decided under the lock."""

from __future__ import annotations

import multiprocessing

import pytest

from tracemark.fingerprint import FingerprintScheme, Registry, RegistryError
from tracemark.fingerprint.errors import DuplicateCustomerError

WRITERS, EACH = 4, 25


def _register(path: str, scheme: FingerprintScheme, writer: int, start) -> None:
    reg = Registry.open(path)
    start.wait()
    for i in range(EACH):
        cid = f"w{writer}-c{i}"
        reg.add(scheme, cid)
        reg.set_copy(cid, f"copies/{cid}.safetensors", f"{writer:02x}{i:02x}" * 16, {"writer": writer})


def _set_base(path: str, digest: str, start, results) -> None:
    reg = Registry.open(path)
    start.wait()
    try:
        reg.set_base(digest)
        results.put("set")
    except RegistryError as exc:
        results.put(f"refused: {exc}")


def _run(target, args_list) -> None:
    """Run ``target(*args)`` in one forked process per ``args`` (arguments are inherited, not pickled)."""
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=target, args=args) for args in args_list]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]


def test_concurrent_writers_lose_no_customer_and_no_copy(models, tmp_path):
    scheme = FingerprintScheme.from_key(models.key)
    path = tmp_path / "reg.sqlite"
    Registry.create(path, scheme)
    start = multiprocessing.get_context("fork").Barrier(WRITERS)
    _run(_register, [(str(path), scheme, w, start) for w in range(WRITERS)])
    records = {r.id: r for r in Registry.open(path).records()}
    assert len(records) == WRITERS * EACH
    for w in range(WRITERS):
        for i in range(EACH):
            r = records[f"w{w}-c{i}"]
            assert r.model_sha256 == f"{w:02x}{i:02x}" * 16 and r.report == {"writer": w}
            assert r.code_commitment == scheme.code_commitment(r.id)


def test_two_processes_setting_different_bases_at_once_one_is_refused(models, tmp_path):
    path = tmp_path / "reg.sqlite"
    Registry.create(path, FingerprintScheme.from_key(models.key))
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(2), context.Queue()
    _run(_set_base, [(str(path), "a" * 64, start, results), (str(path), "b" * 64, start, results)])
    outcomes = sorted((results.get(timeout=10) for _ in range(2)), key=lambda o: o != "set")
    assert outcomes[0] == "set" and outcomes[1].startswith("refused: the base model given")
    assert Registry.open(path).base_sha256 in ("a" * 64, "b" * 64)


def test_add_many_is_all_or_nothing(models, tmp_path):
    scheme = FingerprintScheme.from_key(models.key)
    reg = Registry.create(tmp_path / "reg.sqlite", scheme)
    reg.add_many(scheme, ["acme", "globex"])
    with pytest.raises(DuplicateCustomerError, match="'globex' is already registered"):
        reg.add_many(scheme, ["initech", "globex", "hooli"])
    assert reg.customers() == ["acme", "globex"]
