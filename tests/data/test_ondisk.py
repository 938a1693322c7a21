"""On-disk datasets: image folders decoded on access, memmap folders, and the errors they give."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import tracemark as tm
from tracemark.data import ImageFolder, MemmapImages, open_folder, write_memmap
from tracemark.data.batches import check_items
from tracemark.errors import DatasetError, DatasetItemError, ShapeMismatchError
from tracemark.trust.requests import ImageBounds


def _folder(root, per_class=3, size=(10, 12), mode="RGB", fmt="PNG"):
    """A tiny image folder: classes b and a (written in that order), ``per_class`` images each, pixel = class value."""
    values = {"b": 200, "a": 40}
    for name, value in values.items():
        (root / name).mkdir(parents=True)
        colour = (value,) * 3 if mode == "RGB" else value
        for i in range(per_class):
            Image.new(mode, size, colour).save(root / name / f"{i}.{fmt.lower()}", fmt)
    return root


def test_image_folder_labels_sorted_classes_and_resizes(tmp_path):
    ds = ImageFolder(_folder(tmp_path / "imgs"), input_shape=(3, 8, 8))
    assert ds.classes == ["a", "b"] and ds.num_classes == 2 and len(ds) == 6 and ds.input_shape == (3, 8, 8)
    x, y = ds[0]
    assert x.dtype == torch.float32 and x.shape == (3, 8, 8) and y == 0
    assert torch.allclose(x, torch.full((3, 8, 8), 40 / 255))
    x, y = ds[5]
    assert y == 1 and torch.allclose(x, torch.full((3, 8, 8), 200 / 255))
    check_items(ds, (3, 8, 8))  # the adapter every training function uses accepts it


def test_image_folder_grey_and_inferred_shape(tmp_path):
    ds = ImageFolder(_folder(tmp_path / "grey", mode="L", size=(12, 10)))
    assert ds.input_shape == (1, 10, 12)  # (C, H, W) of the first image; PIL sizes are (W, H)
    assert ImageFolder(tmp_path / "grey", (3, 6, 6))[0][0].shape == (3, 6, 6)  # grey converted to RGB on request


def test_image_folder_trains_and_samples_a_key(tmp_path):
    ds = ImageFolder(_folder(tmp_path / "imgs", per_class=8), input_shape=(1, 8, 8))
    model = tm.build_model("mlp", ds.input_shape, ds.num_classes, seed=0)
    tm.fit(model, ds, epochs=15, batch_size=4, seed=0)
    assert tm.accuracy(model, ds) == 1.0
    key = tm.WatermarkKey.generate("noise", images=ds, num_classes=2, n_triggers=4, seed=bytes(32))
    assert key.input_shape == (1, 8, 8)


def test_image_folder_without_class_subfolders_is_one_line(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "flat" / "0.png")
    with pytest.raises(DatasetError, match="no class subfolders") as exc:
        ImageFolder(tmp_path / "flat", (1, 4, 4))
    assert "\n" not in str(exc.value)


def test_class_folder_without_images_is_named(tmp_path):
    root = _folder(tmp_path / "imgs")
    (root / "c").mkdir()
    (root / "c" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"imgs/c: class folder without PNG or JPEG images"):
        ImageFolder(root, (3, 8, 8))


def test_unreadable_image_names_the_file(tmp_path):
    root = _folder(tmp_path / "imgs")
    (root / "a" / "9.png").write_bytes(b"not a png at all")
    ds = ImageFolder(root, (3, 8, 8))
    bad = [i for i, (path, _) in enumerate(ds.samples) if path.endswith("9.png")][0]
    with pytest.raises(DatasetItemError) as exc:
        ds[bad]
    assert str(exc.value).startswith(str(root / "a" / "9.png")) and "not a readable image" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_image_over_the_pixel_bound_is_refused_before_decoding(tmp_path):
    ds = ImageFolder(_folder(tmp_path / "imgs", size=(40, 40)), (3, 8, 8), bounds=ImageBounds(max_pixels=1000))
    with pytest.raises(DatasetItemError, match="40×40 pixels, more than the 1000"):
        ds[0]


def test_memmap_round_trip_matches_the_arrays(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 3, 6, 5), dtype=np.uint8)
    y = rng.integers(0, 4, 20)
    y[0] = 3
    path = write_memmap(tmp_path / "mm", x, y)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mm"]  # no temp folder left beside it
    ds = open_folder(path)
    assert isinstance(ds, MemmapImages) and ds.num_classes == 4 and ds.input_shape == (3, 6, 5) and len(ds) == 20
    assert isinstance(ds.images, np.memmap)  # mapped, not read
    xi, yi = ds[7]
    assert xi.dtype == torch.float32 and yi == y[7]
    assert np.array_equal(xi.numpy(), x[7].astype(np.float32) / np.float32(255))  # as load_dataset scales uint8


def test_memmap_pickles_as_its_path(tmp_path):
    import pickle

    ds = MemmapImages(write_memmap(tmp_path / "mm", np.zeros((1000, 3, 16, 16), np.uint8), np.arange(1000) % 3))
    blob = pickle.dumps(ds)
    assert len(blob) < 2000  # not the 768 kB of pixels
    again = pickle.loads(blob)
    assert again.num_classes == 3 and torch.equal(again[5][0], ds[5][0])


def test_memmap_float_and_chunked_writer(tmp_path):
    x = np.random.default_rng(1).random((6, 1, 4, 4), dtype=np.float32)
    path = write_memmap(tmp_path / "f", (x[:4], x[4:]), np.arange(6) % 2, shape=x.shape, dtype=np.float32)
    ds = MemmapImages(path)
    assert torch.equal(ds[5][0], torch.from_numpy(x[5])) and ds.num_classes == 2


def test_memmap_length_mismatch_is_one_line(tmp_path):
    (tmp_path / "mm").mkdir()
    np.save(tmp_path / "mm" / "images.npy", np.zeros((5, 1, 4, 4), np.uint8))
    np.save(tmp_path / "mm" / "labels.npy", np.zeros(4, np.int64))
    with pytest.raises(DatasetError, match="5 images but 4 labels") as exc:
        MemmapImages(tmp_path / "mm")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(("images", "labels", "needle"), [
    (np.zeros((5, 4, 4), np.uint8), np.zeros(5, np.int64), "need N×C×H×W uint8 or float32"),
    (np.zeros((5, 1, 4, 4), np.float64), np.zeros(5, np.int64), "need N×C×H×W uint8 or float32"),
    (np.zeros((5, 1, 4, 4), np.uint8), np.zeros(5, np.float32), "need N integers"),
    (np.array([object()] * 5, dtype=object), np.zeros(5, np.int64), "not a readable .npy array"),
])
def test_bad_memmap_arrays_are_refused(tmp_path, images, labels, needle):
    (tmp_path / "mm").mkdir()
    np.save(tmp_path / "mm" / "images.npy", images, allow_pickle=True)
    np.save(tmp_path / "mm" / "labels.npy", labels)
    with pytest.raises(DatasetError, match=needle):
        MemmapImages(tmp_path / "mm")


def test_memmap_shape_unlike_the_key_is_named(tmp_path):
    ds = MemmapImages(write_memmap(tmp_path / "mm", np.zeros((3, 1, 4, 4), np.uint8), np.zeros(3, np.int64)))
    with pytest.raises(ShapeMismatchError, match=r"\(1, 4, 4\).*\(1, 8, 8\)"):
        check_items(ds, (1, 8, 8))


def test_missing_memmap_file_is_one_line(tmp_path):
    (tmp_path / "mm").mkdir()
    np.save(tmp_path / "mm" / "images.npy", np.zeros((2, 1, 4, 4), np.uint8))
    with pytest.raises(DatasetError, match="no labels.npy"):
        open_folder(tmp_path / "mm")
