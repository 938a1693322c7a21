"""The lineage file round-trips; an altered, oversized or foreign file is refused with one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.cli_runs import cli_error
from tracemark.errors import FormatVersionError, TamperedError
from tracemark.lineage import LineageFileError, read_lineage
from tracemark.lineage.fileformat import MAX_INPUTS, Lineage, commitment_bytes


def _rewrite(lineage: Lineage, path, **changes) -> None:
    from safetensors.numpy import save

    meta = {k: v for k, v in lineage.to_dict().items() if k not in ("n_inputs", "input_shape")}
    meta.update(changes.pop("meta", {}))
    tensors = {"inputs": lineage.inputs, "labels": lineage.labels, **changes}
    path.write_bytes(save(tensors, metadata={"tracemark-lineage": json.dumps(meta)}))


def test_round_trip_keeps_inputs_labels_calibration_and_commitment(built):
    original, loaded = built.build.lineage, read_lineage(built.file)
    assert np.array_equal(loaded.inputs, original.inputs) and np.array_equal(loaded.labels, original.labels)
    assert loaded.calibration == original.calibration and loaded.pool == original.pool
    assert loaded.commitment() == original.commitment() == __import__("hashlib").sha256(
        commitment_bytes(original.inputs, original.labels, 10)).hexdigest()
    assert built.file.stat().st_mode & 0o077 == 0


def test_version_1_file_reads_with_the_fit_checked_rule(built, tmp_path):
    """A file written before version 2 (no calibration rule) still reads, as the pooled fit-checked bound it had."""
    from tracemark.lineage import calibrate
    from tracemark.targets.local import TorchTarget

    lineage = built.build.lineage
    refs = [TorchTarget(m.model, description=m.spec.name) for m in built.build.pool.select("calibration")]
    old = calibrate(lineage.inputs, lineage.labels, refs, rule="fit-checked").to_dict()
    path = tmp_path / "v1.lineage"
    _rewrite(lineage, path, meta={"version": 1, "calibration": {k: v for k, v in old.items() if k != "rule"}})
    loaded = read_lineage(path)
    assert loaded.calibration.rule == "fit-checked" and loaded.calibration.rate == pytest.approx(old["rate"])
    assert lineage.calibration.rule == "worst-reference" and lineage.to_dict()["version"] == 2
    _rewrite(lineage, path, meta={"version": 1, "calibration": old})
    with pytest.raises(LineageFileError, match="version 1 lineage file carries no calibration rule"):
        read_lineage(path)
    _rewrite(lineage, path, meta={"calibration": {k: v for k, v in old.items() if k != "rule"}})
    with pytest.raises(LineageFileError, match="version 2 lineage file must name its calibration rule"):
        read_lineage(path)


def test_changed_label_is_tampering(built, tmp_path, capsys, monkeypatch):
    lineage = built.build.lineage
    path = tmp_path / "t.lineage"
    labels = lineage.labels.copy()
    labels[0] = (labels[0] + 1) % 10
    _rewrite(lineage, path, labels=labels)
    with pytest.raises(TamperedError, match="do not match the recorded commitment"):
        read_lineage(path)
    line = cli_error(capsys, monkeypatch, "lineage", "check", "--lineage", str(path), str(path))
    assert "TamperedError" in line


def test_altered_calibration_rate_is_refused(built, tmp_path):
    lineage = built.build.lineage
    path = tmp_path / "c.lineage"
    _rewrite(lineage, path, meta={"calibration": {**lineage.calibration.to_dict(), "rate": 0.001}})
    with pytest.raises(LineageFileError, match="does not follow from its agreements"):
        read_lineage(path)


def test_oversized_and_foreign_files_are_refused_before_loading(built, tmp_path):
    lineage = built.build.lineage
    many = tmp_path / "many.lineage"
    n = MAX_INPUTS + 1
    _rewrite(lineage, many, inputs=np.zeros((n, 1, 8, 8), np.uint8), labels=np.zeros(n, np.int64))
    with pytest.raises(LineageFileError, match="N <= 300"):
        read_lineage(many)
    huge_header = tmp_path / "header.lineage"
    huge_header.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(LineageFileError, match="header"):
        read_lineage(huge_header)
    newer = tmp_path / "v3.lineage"
    _rewrite(lineage, newer, meta={"version": 3})
    with pytest.raises(FormatVersionError):
        read_lineage(newer)
    model = tmp_path / "model.lineage"
    import tracemark as tm

    tm.save_model(built.marked, model)
    with pytest.raises(LineageFileError, match="not a lineage file"):
        read_lineage(model)
