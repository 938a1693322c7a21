"""Generation is deterministic for a seed; a fine-tuned copy is a copy, an independent model is not."""

from __future__ import annotations

import numpy as np

from tests.lineage.conftest import SETTINGS, small_plan
from tracemark.evidence.protocol import Evidence
from tracemark.lineage import GenerationSettings, LineageEvidence, create_lineage
from tracemark.targets.local import TorchTarget


def test_same_seed_same_fingerprint_other_seed_other(built):
    again = create_lineage(built.marked, built.data, pool_dir=built.pool_dir, plan=small_plan(), settings=SETTINGS, device="cpu")
    assert again.pool.trained == 0
    assert np.array_equal(again.lineage.inputs, built.build.lineage.inputs)
    assert np.array_equal(again.lineage.labels, built.build.lineage.labels)
    assert again.lineage.commitment() == built.build.lineage.commitment()
    other = create_lineage(built.marked, built.data, pool_dir=built.pool_dir, plan=small_plan(),
                           settings=GenerationSettings(**{**SETTINGS.__dict__, "seed": 1}), device="cpu")
    assert other.lineage.commitment() != built.build.lineage.commitment()


def test_inputs_are_bounded_perturbations_the_source_labels_as_expected(built):
    lineage = built.build.lineage
    assert len(lineage.labels) == 100 and lineage.inputs.dtype == np.uint8
    assert np.array_equal(TorchTarget(built.marked).predict_labels(lineage.images()), lineage.labels)
    assert lineage.generation["surrogate_agreement"] > lineage.generation["reference_agreement"] + 0.3


def test_fine_tuned_copy_is_copy_independent_model_is_not(built, fine_tuned, independent):
    evidence = LineageEvidence.load(built.file)
    assert isinstance(evidence, Evidence) and evidence.kind == "lineage"
    stolen = evidence.test(TorchTarget(fine_tuned, description="fine-tuned copy"), alpha=1e-9)
    assert stolen.decision == "copy" and stolen.p_value <= 1e-9
    assert stolen.null_kind == "calibrated" and stolen.queries == 100 <= 300
    assert stolen.commitment is not None and stolen.commitment.digest == built.build.lineage.commitment()
    innocent = evidence.test(TorchTarget(independent, description="independent lenet"), alpha=1e-9)
    assert innocent.decision == "no-evidence" and innocent.p_value > 1e-3
    assert innocent.details["matches"] < stolen.details["matches"]
    assert "no-evidence" in str(innocent).lower() and innocent.to_dict()["kind"] == "lineage"


def test_kept_inputs_pass_the_surrogate_and_reference_filters(built):
    lineage, pool = built.build.lineage, built.build.pool
    x = lineage.images()

    def share(role: str) -> np.ndarray:
        members = pool.select("generation", role)
        return np.mean([TorchTarget(m.model).predict_labels(x) == lineage.labels for m in members], axis=0)

    settings = lineage.generation["settings"]
    assert share("surrogate").min() >= settings["min_surrogates"] - 1e-6
    assert share("reference").max() <= settings["max_references"] + 1e-6
    assert lineage.generation["eligible"] >= lineage.generation["kept"] == 100
    assert lineage.generation["adversarial"] >= lineage.generation["eligible"]
