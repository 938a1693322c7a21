"""Watermark keys: trigger kinds, labels, commitments and exact regeneration."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import tracemark as tm
from tracemark.keys import KINDS


def make(kind: str, digits, **kw) -> tm.WatermarkKey:
    return tm.WatermarkKey.generate(kind, images=digits.x_train, labels=digits.y_train, n_triggers=50, seed=b"s" * 32, **kw)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_makes_valid_triggers(kind, digits):
    key = make(kind, digits)
    t = key.triggers()
    assert t.inputs.shape == (50, 1, 8, 8) and t.inputs.dtype == np.float32
    assert 0.0 <= t.inputs.min() and t.inputs.max() <= 1.0
    assert t.labels.min() >= 0 and t.labels.max() < 10
    assert len(np.unique(t.labels)) > 3  # keyed labels are spread over classes
    if kind in ("content", "noise"):
        assert np.all(t.labels != t.true_labels), "a keyed label never equals the image's own class"
        assert t.null_rate == pytest.approx(1 / 9)
    else:
        assert t.null_rate == pytest.approx(1 / 10)


def test_content_triggers_differ_from_source_only_in_the_stamp(digits):
    key = make("content", digits)
    t = key.triggers()
    base = key.base_images.astype(np.float64) / 255
    size = key.drawing.shape[0]
    row, col = key.params["row"], key.params["col"]
    changed = np.abs(t.inputs - base) > 1e-6
    outside = changed.copy()
    outside[:, :, row : row + size, col : col + size] = False
    assert changed.any() and not outside.any()


def test_noise_triggers_are_perturbed_source_images(digits):
    key = make("noise", digits, sigma=0.2)
    t = key.triggers()
    base = key.base_images.astype(np.float32) / 255
    diff = t.inputs - base
    assert 0.05 < np.abs(diff).mean() < 0.3


def test_single_label_mode_uses_target_and_excludes_it_from_sources(digits):
    key = make("content", digits, label_mode="single", target_label=3)
    t = key.triggers()
    assert np.all(t.labels == 3) and np.all(t.true_labels != 3) and t.null_rate is None
    with pytest.raises(ValueError, match="target label"):
        make("content", digits, label_mode="single", target_label=3, source_labels=[3, 4])


def test_source_labels_restrict_base_images(digits):
    key = make("noise", digits, source_labels=[1, 2])
    assert set(key.triggers().true_labels.tolist()) <= {1, 2}


def test_same_seed_same_key_material_different_seed_different(digits):
    a, b = make("content", digits), make("content", digits)
    assert a.triggers().sha256() == b.triggers().sha256()
    c = tm.WatermarkKey.generate("content", images=digits.x_train, labels=digits.y_train, n_triggers=50, seed=b"t" * 32)
    assert c.triggers().sha256() != a.triggers().sha256()


def test_commitment_binds_every_field(digits):
    key = make("content", digits)
    body = key.to_body()
    original = key.commitment()
    assert tm.WatermarkKey.from_body(body).commitment() == original
    for field, value in [("target_label", 1), ("n_triggers", 49), ("params", {**body["params"], "opacity": 0.5}), ("seed", "00" * 32)]:
        changed = tm.WatermarkKey.from_body({**body, field: value})
        assert changed.commitment() != original, field


def test_user_png_drawing(tmp_path, digits):
    from PIL import Image

    ink = np.zeros((30, 30), dtype=np.uint8)
    ink[5:25, 14:16] = 255  # a vertical bar, white on black
    Image.fromarray(ink).save(tmp_path / "mark.png")
    key = make("content", digits, drawing_png=tmp_path / "mark.png", drawing_size=3)
    assert key.drawing.shape == (3, 3)
    assert key.drawing[:, 1].mean() > key.drawing[:, 0].mean()


def test_key_regenerates_byte_identical_triggers_in_a_fresh_process(tmp_path, digits):
    for kind in KINDS:
        key = make(kind, digits)
        key.save(tmp_path / f"{kind}.key", passphrase="pw" if kind == "noise" else None)
        code = (
            "import sys, tracemark as tm; "
            "k = tm.WatermarkKey.load(sys.argv[1], sys.argv[2] or None); "
            "print(k.triggers().sha256(), k.commitment())"
        )
        passphrase = "pw" if kind == "noise" else ""
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"{kind}.key"), passphrase],
                             capture_output=True, text=True, check=True)
        digest, commitment = out.stdout.split()
        assert digest == key.triggers().sha256(), kind
        assert commitment == key.commitment()


def test_generate_rejects_bad_arguments(digits):
    with pytest.raises(ValueError, match="unknown key kind"):
        make("sticker", digits)
    with pytest.raises(ValueError, match="single label mode"):
        make("content", digits, label_mode="single")
    with pytest.raises(ValueError, match="only"):
        tm.WatermarkKey.generate("content", images=digits.x_train[:10], labels=digits.y_train[:10], n_triggers=50)
    with pytest.raises(ValueError, match="images and labels"):
        tm.WatermarkKey.generate("noise", num_classes=10, input_shape=(1, 8, 8))


class _CountingDataset(torch.utils.data.Dataset):
    """Digits as (image, label) items, counting how many items were read."""

    def __init__(self, digits: tm.ImageData, copies: int = 1):
        self.x, self.y, self.copies, self.reads = digits.x_train, digits.y_train, copies, 0

    def __len__(self) -> int:
        return len(self.x) * self.copies

    def __getitem__(self, i: int):
        self.reads += 1
        j = i % len(self.x)
        return torch.from_numpy(self.x[j]), int(self.y[j])


def test_key_from_a_dataset_reads_a_seeded_sample_only(digits):
    seed = bytes(range(32))
    dataset = _CountingDataset(digits, copies=10)  # 14,370 items
    key = tm.WatermarkKey.generate("content", images=dataset, num_classes=10, n_triggers=50, seed=seed)
    assert dataset.reads <= tm.keys.key.DATASET_SAMPLE + 1  # the sample (and the first item's check), not the set
    again = tm.WatermarkKey.generate("content", images=_CountingDataset(digits, copies=10), num_classes=10, n_triggers=50, seed=seed)
    assert key.commitment() == again.commitment()
    triggers = key.triggers()
    assert triggers.inputs.shape == (50, *digits.input_shape) and set(triggers.labels) <= set(range(10))
    with pytest.raises(ValueError, match="num_classes"):
        tm.WatermarkKey.generate("content", images=dataset, n_triggers=50, seed=seed)
    with pytest.raises(ValueError, match="do not pass labels"):
        tm.WatermarkKey.generate("content", images=dataset, labels=digits.y_train, num_classes=10, seed=seed)
