"""Null profiles: built from independent models, saved with their recipe, usable by verify, no false copies."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tracemark as tm
from tracemark.lab import NullProfile, NullProfileError, build_null_profile
from tracemark.verification import verify


@pytest.fixture(scope="module")
def profiled(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("null")
    profile, refs = build_null_profile(models.data, [models.key], n_models=4, archs=("mlp", "lenet"), epochs=10,
                                       train_size=1000, folder=folder)
    return profile, refs, folder


def test_profile_records_how_it_was_made(profiled):
    profile, _, _ = profiled
    assert [r.arch for r in profile.references] == ["mlp", "lenet", "mlp", "lenet"]
    assert [r.seed for r in profile.references] == [1000, 1001, 1002, 1003]
    assert all(r.train_size == 1000 and r.epochs == 10 and r.test_accuracy > 0.8 for r in profile.references)
    assert profile.recipe["archs"] == ["mlp", "lenet"] and profile.dataset == "digits"


def test_no_independent_model_is_called_a_copy(profiled, models):
    profile, _, _ = profiled
    check = profile.false_positives(models.key)
    assert check.called_copy == 0 and len(check.matches) == 4
    assert all(m < 30 for m in check.matches)


def test_verify_uses_the_profile_null(profiled, models):
    profile, _, _ = profiled
    null = profile.null_for(models.key)
    assert null.source == "empirical" and null.details["n_models"] == 4
    verdict = verify(models.key, tm.TorchTarget(models.marked), null=null)
    assert verdict.is_copy and verdict.null["rate"] == max(null.rate, 1 / 9)


def test_save_load_and_reuse_the_models_for_a_new_key(profiled, models, tmp_path):
    profile, refs, folder = profiled
    path = profile.save(folder / "profile.json")
    loaded = NullProfile.load(path)
    assert loaded.to_dict() == profile.to_dict()
    other = tm.WatermarkKey.generate("noise", images=models.data.x_train, labels=models.data.y_train, n_triggers=50,
                                     seed=b"another-key-seed-0123456789abcdef")
    assert not loaded.covers(other)
    with pytest.raises(NullProfileError):
        loaded.null_for(other)
    loaded.add_key(other, loaded.load_references(folder))
    direct = [int(np.sum(tm.predict_labels(m, other.triggers().inputs) == other.triggers().labels)) for m in refs]
    assert loaded.matches[other.commitment()] == direct


def test_a_changed_reference_file_is_refused(profiled, tmp_path):
    profile, _, folder = profiled
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    for ref in profile.references:
        data = (folder / ref.file).read_bytes()
        (copy_dir / ref.file).write_bytes(data[:-1] + bytes([data[-1] ^ 1]) if ref.seed == 1002 else data)
    with pytest.raises(NullProfileError, match="changed"):
        profile.load_references(copy_dir)


def test_malformed_profiles_are_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(NullProfileError):
        NullProfile.load(bad)
    bad.write_text(json.dumps({"format": "tracemark-null-profile/1", "dataset": "x"}))
    with pytest.raises(NullProfileError):
        NullProfile.load(bad)
