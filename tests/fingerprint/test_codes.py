"""Customer codes: derived from the key alone, never the true class, uniform, one query per cell."""

from __future__ import annotations

import numpy as np
import pytest

import tracemark as tm
from tracemark.fingerprint import CustomersFileError, FingerprintError, FingerprintScheme


def test_codes_are_deterministic_and_key_bound(models, tmp_path):
    scheme = FingerprintScheme.from_key(models.key)
    assert scheme.n_drawings == 10 and scheme.n_cells == 100 and scheme.null_rate == pytest.approx(1 / 9)
    models.key.save(tmp_path / "k.key")
    again = FingerprintScheme.from_key(tm.WatermarkKey.load(tmp_path / "k.key"))
    assert np.array_equal(scheme.class_map("acme"), again.class_map("acme"))
    assert scheme.code_commitment("acme") == again.code_commitment("acme")
    assert np.array_equal(scheme.queries.inputs, again.queries.inputs)
    assert not np.array_equal(scheme.class_map("acme"), scheme.class_map("globex"))
    other_key = tm.WatermarkKey.generate("content", images=models.data.x_train, labels=models.data.y_train,
                                         n_triggers=100, seed=bytes(range(1, 33)))
    other = FingerprintScheme.from_key(other_key)
    assert not np.array_equal(scheme.class_map("acme"), other.class_map("acme"))
    assert scheme.code_commitment("acme") != other.code_commitment("acme")
    # the commitment hides the secret
    assert scheme.customer_secret("acme").hex() not in scheme.code_commitment("acme")


def test_labels_never_the_true_class_and_uniform(models):
    scheme = FingerprintScheme.from_key(models.key)
    maps = np.stack([scheme.class_map(f"c{i}") for i in range(2000)])  # customers × drawings × classes
    classes = np.arange(scheme.num_classes)
    assert not np.any(maps == classes[None, None, :])
    # each cell's label is uniform over the 9 other classes across customers
    offsets = (maps - classes[None, None, :]) % scheme.num_classes
    counts = np.bincount(offsets.ravel(), minlength=10)[1:]
    expected = offsets.size / 9
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))


def test_one_query_per_cell(models):
    scheme = FingerprintScheme.from_key(models.key)
    q = scheme.queries
    assert len(q) == 100 and q.inputs.dtype == np.float32
    cells = set(zip(q.drawing_ids.tolist(), q.true_labels.tolist()))
    assert len(cells) == 100
    assert len({d.tobytes() for d in scheme.drawings}) == scheme.n_drawings
    assert np.array_equal(scheme.drawings[0], models.key.drawing)
    # the stamp changes the images, only inside the drawing's window
    base = models.key.base_images.astype(np.float32) / 255
    stamped = scheme.stamp(base, np.zeros(len(base), dtype=np.int64))
    assert not np.array_equal(stamped, base)
    size, row, col = scheme.drawings.shape[1], models.key.params["row"], models.key.params["col"]
    outside = np.ones(base.shape[1:], dtype=bool)
    outside[:, row:row + size, col:col + size] = False
    assert np.allclose(stamped[:, outside], base[:, outside])


def test_label_matrix_matches_class_maps(models):
    scheme = FingerprintScheme.from_key(models.key)
    q = scheme.queries
    matrix = scheme.label_matrix(["a", "b"], q.drawing_ids, q.true_labels)
    assert matrix.shape == (2, 100)
    assert np.array_equal(matrix[1], scheme.class_map("b")[q.drawing_ids, q.true_labels])


def test_scheme_needs_a_content_key_with_every_class(models):
    abstract = tm.WatermarkKey.generate("abstract", input_shape=(1, 8, 8), num_classes=10, n_triggers=20)
    with pytest.raises(FingerprintError, match="content key"):
        FingerprintScheme.from_key(abstract)
    few = tm.WatermarkKey.generate("content", images=models.data.x_train, labels=models.data.y_train, n_triggers=20,
                                   source_labels=[1, 2, 3], seed=bytes(32))
    with pytest.raises(FingerprintError, match="no image of class"):
        FingerprintScheme.from_key(few)


@pytest.mark.parametrize("bad", ["", " acme", "a/b", ".hidden", "x" * 129, "tab\tbed"])
def test_invalid_customer_ids(models, bad):
    with pytest.raises(CustomersFileError):
        FingerprintScheme.from_key(models.key).class_map(bad)
