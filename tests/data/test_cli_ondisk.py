"""The CLI's ``--data`` takes an image folder (and a memmap folder): train, key new, embed and verify from one."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.cli_runs import cli_error, run
from tracemark.data import write_memmap


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """6 classes of 12×12 RGB PNGs, 8 each: class c is bright in rows 2c and 2c+1, with seeded noise."""
    root = tmp_path_factory.mktemp("ondisk") / "imgs"
    rng = np.random.default_rng(0)
    for c in range(6):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 60, (12, 12, 3), dtype=np.uint8)
            pixels[2 * c : 2 * c + 2] += 180
            Image.fromarray(pixels, "RGB").save(root / f"class{c}" / f"{i}.png")
    return root


def test_train_key_embed_verify_from_an_image_folder(folder):
    d = folder.parent
    base, marked, key = (str(d / n) for n in ("base.safetensors", "marked.safetensors", "k.key"))
    r = run("train", "--data", str(folder), "--arch", "small_cnn", "--epochs", "10", "--out", base, "--json")
    assert json.loads(r.output)["training_accuracy"] > 0.9
    run("key", "new", "--kind", "noise", "--data", str(folder), "--out", key, "--triggers", "16", "--json")
    r = run("embed", "--model", base, "--key", key, "--data", str(folder), "--out", marked, "--lr", "2e-3",
            "--max-clean-drop", "5", "--json")
    report = json.loads(r.output)
    assert report["reached_goal"] and report["trigger_accuracy_after"] == 1.0
    assert json.loads(run("verify", "--model", marked, "--key", key, "--json").output)["verdict"] == "copy"
    assert json.loads(run("verify", "--model", base, "--key", key, "--json").output)["verdict"] == "no-evidence"


def test_train_from_a_memmap_folder(tmp_path):
    rng = np.random.default_rng(1)
    y = np.arange(40) % 2
    x = (rng.integers(0, 60, (40, 1, 8, 8)) + 180 * y[:, None, None, None]).astype(np.uint8)
    mm = write_memmap(tmp_path / "mm", x, y)
    r = run("train", "--data", str(mm), "--arch", "mlp", "--epochs", "20", "--out", str(tmp_path / "m.safetensors"), "--json")
    assert json.loads(r.output)["training_accuracy"] == 1.0


def test_folder_errors_are_one_line(folder, tmp_path, capsys, monkeypatch):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "flat" / "0.png")
    line = cli_error(capsys, monkeypatch, "train", "--data", str(tmp_path / "flat"), "--out", str(tmp_path / "m.safetensors"))
    assert "no class subfolders" in line
    (tmp_path / "mm").mkdir()
    np.save(tmp_path / "mm" / "images.npy", np.zeros((3, 3, 16, 16), np.uint8))
    np.save(tmp_path / "mm" / "labels.npy", np.zeros(2, np.int64))
    line = cli_error(capsys, monkeypatch, "key", "new", "--data", str(tmp_path / "mm"), "--out", str(tmp_path / "k.key"))
    assert "3 images but 2 labels" in line
    line = cli_error(capsys, monkeypatch, "train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.safetensors"))
    assert "no such folder" in line
