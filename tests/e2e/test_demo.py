"""The end-to-end demo that `make demo` runs: every suspect gets the expected verdict."""

from __future__ import annotations

import json

import tracemark as tm
from tracemark.demo import run_demo


def test_demo_marks_and_tells_copies_from_independent_models(tmp_path):
    result = run_demo(tmp_path / "demo", show_progress=False)
    assert [row.verdict for row in result.rows] == ["copy", "copy", "no-evidence"], str(result)
    assert result.all_as_expected and result.embed_report.trigger_accuracy_after >= 0.99
    files = {p.name for p in (tmp_path / "demo").iterdir()}
    assert {"watermark.key", "triggers.png", "marked.onnx", "results.json", "independent.safetensors"} <= files
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["key_commitment"] == tm.WatermarkKey.load(tmp_path / "demo" / "watermark.key").commitment()
    assert "copy" in str(result) and "no-evidence" in str(result)
