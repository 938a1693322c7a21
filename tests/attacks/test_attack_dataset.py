"""The thief's data as a torch Dataset: the same stolen models as from the same arrays, queries streamed in chunks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import tracemark as tm
from tracemark.attacks import ArtExtract, AttackError, Distill, Extract, FineTune, Quantize, ThiefData
from tracemark.attacks._clone import QUERY_CHUNK
from tracemark.errors import ShapeMismatchError

N = 400  # thief images: enough to tell the models apart, few enough to stay fast


class Images(Dataset):
    """(numpy image, int label) items of arrays, recording how many items were read."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y, self.reads, self.rows = x, y, 0, set()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        self.reads += 1
        self.rows.add(int(i))
        return self.x[i], int(self.y[i])


@pytest.fixture(scope="module")
def arrays(models) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = models.data
    ood = d.x_test[::-1][:300].copy()  # a stand-in out-of-domain pool
    # copies: load_dataset's 1×H×W arrays have a channel stride that sends batches gathered from them down another
    # oneDNN convolution path; batches collated from a Dataset always have the standard layout
    return d.x_train[:N].copy(), d.y_train[:N].copy(), ood


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("attack", [FineTune("FTAL", n_samples=300, epochs=1), FineTune("RTLL", n_samples=N, epochs=1),
                                    Extract(n_queries=300, epochs=1), Extract(pool="ood", n_queries=200, epochs=1),
                                    Distill(n_queries=300, epochs=1)], ids=lambda a: a.name)
def test_a_dataset_thief_steals_the_same_model_as_the_same_arrays(models, arrays, attack):
    x, y, ood = arrays
    from_arrays = attack.run(models.marked, ThiefData(x, y, ood, seed=5))
    pool = Images(x, y)
    from_dataset = attack.run(models.marked, ThiefData(pool, ood_x=tm.to_tensor_dataset(ood, np.zeros(len(ood))), seed=5,
                                                      device="cpu"))
    assert _same(from_arrays.model, from_dataset.model) and not _same(from_arrays.model, models.marked)
    assert from_arrays.info.get("queries") == from_dataset.info.get("queries")
    used = getattr(attack, "n_samples", None) or (attack.n_queries if attack.pool == "in" else 1)
    assert max(pool.rows) < used  # only the images the attack uses are read
    assert pool.reads <= 5 + used * (attack.epochs + (attack.kind != "finetune"))  # once to ask, once per epoch


def test_queries_from_a_dataset_go_out_in_chunks(models, arrays):
    x, y, _ = arrays
    sizes: list[int] = []

    def spy(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        assert batch.dtype == np.float32 and batch.shape[1:] == x.shape[1:]
        return tm.TorchTarget(models.marked).predict(batch).probabilities

    big = np.concatenate([x] * 3)  # 1,200 images: more than one chunk
    Extract(n_queries=len(big), epochs=1).run(tm.CallableTarget(spy, num_classes=10), ThiefData(Images(big, np.concatenate([y] * 3))))
    assert sizes == [QUERY_CHUNK, len(big) - QUERY_CHUNK]


def test_quantize_calibrates_on_the_first_images_of_either_form(models, arrays):
    x, y, _ = arrays
    a = Quantize(n_calibration=64).run(models.marked, ThiefData(x, y))
    b = Quantize(n_calibration=64).run(models.marked, ThiefData(DataLoader(tm.to_tensor_dataset(x, y), batch_size=16)))
    probe = models.data.x_test[:50]
    assert np.array_equal(a.target.predict(probe).probabilities, b.target.predict(probe).probabilities)


def test_art_extraction_reads_only_a_seeded_sample_of_a_dataset(models, arrays):
    x, y, _ = arrays
    pool = Images(x, y)
    asked = []

    def spy(batch: np.ndarray) -> np.ndarray:
        asked.append(batch)
        return tm.TorchTarget(models.marked).predict(batch).probabilities

    stolen = ArtExtract(n_queries=100, epochs=1).run(tm.CallableTarget(spy, num_classes=10), ThiefData(pool, seed=2))
    assert stolen.info["queries"] == 100
    assert len(pool.rows - {0}) <= 100 and pool.reads <= 100 + 3  # the sample, and the first item checked
    rows = {r.tobytes() for r in x}
    assert all(r.tobytes() in rows for r in np.concatenate(asked))


def test_a_dataset_of_the_wrong_shape_is_refused_before_any_query(models, arrays):
    x, y, _ = arrays
    wrong = Images(np.zeros((50, 3, 8, 8), dtype=np.float32), y[:50])
    asked = []
    target = tm.TorchTarget(models.marked, input_shape=(1, 8, 8), num_classes=10)
    target_spy = tm.CallableTarget(lambda b: asked.append(b) or target.predict(b).probabilities, input_shape=(1, 8, 8), num_classes=10)
    for attack in (Extract(n_queries=50, epochs=1), Distill(n_queries=50, epochs=1)):
        with pytest.raises(ShapeMismatchError, match=r"shape \(3, 8, 8\).*\(1, 8, 8\)") as info:
            attack.run(target_spy, ThiefData(wrong))
        assert "\n" not in str(info.value)
    assert asked == [] and wrong.rows == {0}  # only the first item was looked at, nothing was asked


def test_bad_thief_datasets_get_one_line(arrays):
    x, y, _ = arrays
    with pytest.raises(AttackError, match="carries its own labels"):
        ThiefData(Images(x, y), y)
    from tracemark.errors import DatasetItemError

    class Unlabelled(Dataset):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int):
            return x[i]

    with pytest.raises(DatasetItemError, match="pair"):
        ThiefData(Unlabelled())
