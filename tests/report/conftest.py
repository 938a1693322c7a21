"""Fixtures for the ownership report: a demo-like verdict on digits, its ledger and bundle, a real local TSA, an owner."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.cli_runs import run
from tests.ledger._tsa import Authority, LocalTSA
from tracemark.data import load_dataset
from tracemark.fingerprint import FingerprintScheme
from tracemark.fingerprint.trace import trace
from tracemark.keys import WatermarkKey
from tracemark.lab.protocol import AttackRecord
from tracemark.lab.results import SuiteResult
from tracemark.ledger import (
    Ledger,
    OwnerIdentity,
    export_bundle,
    obtain_timestamp,
    record_embedded,
    record_key_created,
    record_packaged,
    record_verification,
)
from tracemark.targets.local import CallableTarget
from tracemark.verification import verify

PASSPHRASE = "correct horse battery staple"
SUSPECT = "https://suspect.example/predict"
MISSED = (3, 17, 58)


@dataclass
class Case:
    """Everything one report is made from."""

    directory: Path
    owner: OwnerIdentity
    owner_key: Path
    key: WatermarkKey
    key_file: Path
    verdict: dict
    verdict_file: Path
    bundle: Path
    authority: Authority
    tsa_url: str
    trace_file: Path
    robustness_file: Path


def copy_target(key: WatermarkKey) -> CallableTarget:
    """A suspect that learned the triggers (as a stolen marked model does), except for the ones in ``MISSED``."""
    triggers = key.triggers()
    flat = triggers.inputs.reshape(len(triggers), -1)

    def answer(batch: np.ndarray) -> np.ndarray:
        out = []
        for x in batch.reshape(len(batch), -1):
            i = int(np.argmin(np.abs(flat - x).sum(axis=1)))
            label = int(triggers.labels[i])
            out.append((label + 1) % key.num_classes if i in MISSED else label)
        return np.asarray(out)

    return CallableTarget(answer, description=SUSPECT, input_shape=key.input_shape, num_classes=key.num_classes)


def leaked_copy_target(scheme: FingerprintScheme, customer: str) -> CallableTarget:
    """A suspect that answers the tracing queries with ``customer``'s code (the copy licensed to that customer)."""
    q = scheme.queries
    labels = scheme.label_matrix([customer], q.drawing_ids, q.true_labels)[0]
    flat = q.inputs.reshape(len(q), -1)

    def answer(batch: np.ndarray) -> np.ndarray:
        return np.asarray([int(labels[int(np.argmin(np.abs(flat - x).sum(axis=1)))]) for x in batch.reshape(len(batch), -1)])

    return CallableTarget(answer, description=SUSPECT, input_shape=scheme.key.input_shape, num_classes=scheme.key.num_classes)


def robustness_result(path: Path) -> Path:
    """A robustness result.json as `tracemark robustness` writes it (two attack records, made here, not run: the lab
    has its own tests; this one is an input the report renders)."""
    def record(kind: str, attack: str, strength: float, accuracy: float, p: float) -> AttackRecord:
        return AttackRecord(attack=attack, label=attack, kind=kind, access="white-box", strength=strength, params={},
                            thief_accuracy=accuracy, accuracy_drop_points=98.1 - 100 * accuracy, trigger_accuracy=0.9,
                            p_value=p, verdict="copy", within_budget=True, removed=False, seconds=1.0)

    result = SuiteResult("report-test", "digits", 0.981, 1.0, 1e-9, 5.0, {"seed": 0},
                         [record("finetune", "finetune lr=0.01", 0.01, 0.965, 1e-70), record("prune", "prune 30%", 0.3, 0.97, 1e-80)])
    return result.save_json(path)


@pytest.fixture(scope="session")
def case(tmp_path_factory: pytest.TempPathFactory, tsa: LocalTSA, authority: Authority) -> Case:
    """The demo's steps on digits: a content key, its ledger (committed, embedded, packaged, verified, time-stamped), a bundle."""
    directory = tmp_path_factory.mktemp("report-case")
    data = load_dataset("digits")
    key = WatermarkKey.generate("content", images=data.x_train, labels=data.y_train, n_triggers=100, seed=b"report-test-seed" * 2)
    verdict = verify(key, copy_target(key)).to_dict()
    verdict_file = directory / "verdict.json"
    verdict_file.write_text(json.dumps(verdict, indent=2, sort_keys=True, default=str))
    owner = OwnerIdentity.generate()
    owner_key = owner.save(directory / "owner.key", PASSPHRASE)
    ledger = Ledger.init(directory / "ledger", owner)
    record_key_created(ledger, key)
    obtain_timestamp(ledger, tsa.url, authority.chain_pem.read_bytes(), timeout=10)
    record_embedded(ledger, "a" * 64, key.commitment(), {"clean_accuracy": 0.981, "trigger_accuracy": 1.0}, model_name="small_cnn")
    record_packaged(ledger, "b" * 64, "ACME GmbH", model_sha256="a" * 64, key_commitment=key.commitment())
    record_verification(ledger, json.loads(verdict_file.read_text()))
    obtain_timestamp(ledger, tsa.url, authority.chain_pem.read_bytes(), timeout=10)
    bundle = directory / "evidence.zip"
    export_bundle(ledger.directory, bundle, owner, [key])
    key_file = key.save(directory / "watermark.key")
    scheme = FingerprintScheme.from_key(key)
    traced = trace(scheme, ["ACME GmbH", "Beta AG", "Gamma SA"], leaked_copy_target(scheme, "ACME GmbH"))
    trace_file = directory / "trace.json"
    trace_file.write_text(json.dumps(traced.to_dict(), indent=2, sort_keys=True, default=str))
    return Case(directory, owner, owner_key, key, key_file, verdict, verdict_file, bundle, authority, tsa.url, trace_file,
                robustness_result(directory / "result.json"))


@dataclass
class Made:
    out: Path
    pdf: Path
    html: Path
    cert: Path
    seconds: float


@pytest.fixture(scope="session")
def made(case: Case) -> Made:
    """The report of the demo-like verdict, made once through the CLI (the TSA URL taken from the bundle's ledger)."""
    out = case.directory / "report"
    os.environ["TRACEMARK_OWNER_PASSPHRASE"] = PASSPHRASE
    try:
        start = time.perf_counter()
        run("report", "--verdict", str(case.verdict_file), "--bundle", str(case.bundle), "--out", str(out),
            "--trace", str(case.trace_file), "--robustness", str(case.robustness_file),
            "--owner-key", str(case.owner_key), "--owner-name", "ACME Vision GmbH", "--tsa-ca", str(case.authority.ca_pem))
        seconds = time.perf_counter() - start
    finally:
        del os.environ["TRACEMARK_OWNER_PASSPHRASE"]
    return Made(out, out / "report.pdf", out / "report.html", Path(f"{case.owner_key}.cert.pem"), seconds)
