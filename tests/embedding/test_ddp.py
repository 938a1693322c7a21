"""TriggerMixDataset works unchanged under torch.distributed DDP (gloo, 2 CPU processes)."""

from __future__ import annotations

import os
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import tracemark as tm


def _worker(rank: int, world: int, key_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    # A file rendezvous: no TCP port to pick in advance, so no race with other processes for it.
    store = f"file://{os.path.join(out_dir, 'rendezvous')}"
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=world, timeout=timedelta(seconds=60))
    data = tm.load_dataset("digits")
    key = tm.WatermarkKey.load(key_path)
    mixed = tm.TriggerMixDataset(tm.to_tensor_dataset(data.x_train, data.y_train), key, ratio=0.5)
    sampler = torch.utils.data.distributed.DistributedSampler(mixed, num_replicas=world, rank=rank, seed=0)
    loader = torch.utils.data.DataLoader(mixed, batch_size=32, sampler=sampler)
    model = torch.nn.parallel.DistributedDataParallel(tm.build_model("small_cnn", data.input_shape, 10, seed=0))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen_trigger_items = 0
    for epoch in range(15):
        sampler.set_epoch(epoch)
        mixed.set_epoch(epoch)
        for xb, yb in loader:
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            optimiser.step()
        seen_trigger_items += sum(1 for i in sampler if i >= len(data.x_train))
    weights = torch.cat([p.detach().flatten() for p in model.module.parameters()]).numpy()
    np.save(os.path.join(out_dir, f"weights-{rank}.npy"), weights)
    np.save(os.path.join(out_dir, f"seen-{rank}.npy"), np.array([seen_trigger_items]))
    if rank == 0:
        tm.save_model(model.module, os.path.join(out_dir, "ddp.safetensors"))
    dist.barrier()  # neither rank tears gloo down while the other still uses it (else: SIGABRT in the slower one)
    dist.destroy_process_group()


@pytest.mark.timeout(240)
def test_ddp_training_with_trigger_mixing(tmp_path, digits):
    key = tm.WatermarkKey.generate("abstract", num_classes=10, input_shape=(1, 8, 8), n_triggers=100, seed=b"d" * 32)
    key_path = str(key.save(tmp_path / "k.key"))
    mp.start_processes(_worker, args=(2, key_path, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    w0, w1 = np.load(tmp_path / "weights-0.npy"), np.load(tmp_path / "weights-1.npy")
    assert np.array_equal(w0, w1), "DDP replicas must stay identical"
    assert np.load(tmp_path / "seen-0.npy")[0] > 0 and np.load(tmp_path / "seen-1.npy")[0] > 0
    marked = tm.load_model(tmp_path / "ddp.safetensors")
    t = key.triggers()
    assert tm.accuracy(marked, t.inputs, t.labels) >= 0.85
    assert tm.accuracy(marked, digits.x_test, digits.y_test) > 0.93
    assert tm.verify(key, tm.TorchTarget(marked)).verdict == "copy"
