"""Customer copies keep the owner's trigger mark: each verifies ``copy`` with the master key (issue 17, item 5)."""

from __future__ import annotations

import dataclasses

import pytest

import tracemark as tm
from tests.fingerprint.conftest import CUSTOMERS, DIGITS_SETTINGS, MARKED
from tracemark.fingerprint import fanout, feature_cache, mark_customer, trace

# a lower code goal than the session's copies: enough code to name the customer, in fewer steps
FAST = dataclasses.replace(DIGITS_SETTINGS, target_code_accuracy=0.35, max_steps=1500)


@pytest.fixture(scope="module")
def marked_copies(models, fingerprinted, tmp_path_factory):
    out = tmp_path_factory.mktemp("marked-copies")
    report = fanout(models.marked, fingerprinted.scheme, MARKED, models.data, out, settings=FAST, workers=2)
    return report, {c: tm.load_model(out / f"{c}.safetensors") for c in MARKED}


def test_every_copy_of_a_marked_base_verifies_copy_with_the_master_key(models, fingerprinted, marked_copies):
    report, copies = marked_copies
    assert tm.verify(models.key, tm.TorchTarget(models.marked)).verdict == "copy"
    for made in report.copies:
        verdict = tm.verify(models.key, tm.TorchTarget(copies[made.customer]))
        assert verdict.verdict == "copy" and verdict.p_value <= 1e-30, made.customer
        # every trigger but the 10 that are also tracing queries keeps the key's label
        assert made.trigger_accuracy_before == 1.0 and made.trigger_accuracy_after >= 0.85
        assert made.trigger_accuracy_after == pytest.approx(verdict.match_rate)
        assert made.reached_goal and "owner's mark" in str(made)
        # and the copy still carries its own customer code, naming only its customer
        assert trace(fingerprinted.scheme, CUSTOMERS, tm.TorchTarget(copies[made.customer])).accused == [made.customer]


def test_copies_of_an_unmarked_base_do_not_gain_the_mark(models, fingerprinted):
    for customer, copy in fingerprinted.copies.items():
        verdict = tm.verify(models.key, tm.TorchTarget(copy))
        assert verdict.verdict != "copy", customer
        assert verdict.match_rate <= 0.25


def test_without_the_owners_triggers_in_the_fine_tune_a_copy_loses_the_mark(models, fingerprinted):
    settings = dataclasses.replace(FAST, owner_fraction=0.0)
    cache = feature_cache(models.marked, fingerprinted.scheme, models.data, settings)
    model, report = mark_customer(models.marked, fingerprinted.scheme, "acme", models.data, settings=settings, cache=cache)
    assert report.trigger_accuracy_after < 0.5
    assert tm.verify(models.key, tm.TorchTarget(model)).verdict != "copy"
