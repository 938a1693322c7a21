"""Fixtures for ledger tests: an owner, a ledger with every event type, and a real local TSA."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ledger._tsa import Authority, LocalTSA
from tracemark.keys import WatermarkKey
from tracemark.ledger import (
    Ledger,
    OwnerIdentity,
    obtain_timestamp,
    record_embedded,
    record_key_created,
    record_packaged,
    record_verification,
)

PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="session")
def owner() -> OwnerIdentity:
    return OwnerIdentity.generate()


@pytest.fixture(scope="session")
def wm_key() -> WatermarkKey:
    return WatermarkKey.generate("abstract", input_shape=(1, 8, 8), num_classes=10, n_triggers=16)


VERDICT = {"target": "http://suspect/predict", "queries": 100, "matches": 97, "p_value": 3e-90, "null_rate": 0.1, "alpha": 1e-6, "verdict": "copy"}


def populate(ledger: Ledger, key: WatermarkKey, tsa: LocalTSA | None = None, authority: Authority | None = None) -> None:
    """Every event type, a time-stamp over the first ones, and one entry left pending."""
    record_key_created(ledger, key)
    record_embedded(ledger, "a" * 64, key.commitment(), {"clean_accuracy": 0.981, "trigger_accuracy": 1.0}, model_name="cnn")
    record_verification(ledger, {**VERDICT, "key_commitment": key.commitment()}, transcript=b'{"query": 0, "answer": 3}\n', target=VERDICT["target"])
    if tsa is not None and authority is not None:
        obtain_timestamp(ledger, tsa.url, authority.chain_pem.read_bytes(), timeout=10)
    record_packaged(ledger, "b" * 64, "ACME GmbH", model_sha256="a" * 64, key_commitment=key.commitment(), licence={"expires": "2030-01-01"})


@pytest.fixture
def ledger_dir(tmp_path: Path, owner: OwnerIdentity, wm_key: WatermarkKey, tsa: LocalTSA, authority: Authority) -> Path:
    ledger = Ledger.init(tmp_path / "ledger", owner)
    populate(ledger, wm_key, tsa, authority)
    return ledger.directory
