"""The Ray executor: the same tasks on a Ray cluster (``ray.init(address=...)``), or on a Ray started on this machine.

Ray is imported only when this executor is made (``pip install tracemark[ray]``). A shared input
is pickled once into Ray's object store; its arrays travel out of band (each worker maps them
read-only) and keep their exact memory layout, so a task computes on a worker what it computes
in a forked process, byte for byte. Each worker fetches a shared input once and keeps it for its
next tasks. Failed tasks are retried by :class:`~tracemark.executor.base.TaskRun`, not by Ray
(``max_retries=0``), so "how many attempts" means the same on either executor.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import warnings
from typing import Any, Callable, Sequence

import numpy as np

from tracemark._progress import progress_bar
from tracemark.executor.base import DEFAULT_RETRIES, Shared, TaskRun, crashed, new_token, run_task, task_name
from tracemark.executor.errors import ExecutorError

ADDRESS_ENV = "TRACEMARK_RAY_ADDRESS"
INSTALL_HINT = "Ray is not installed; install the extra: pip install tracemark[ray]"


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ExecutorError(INSTALL_HINT) from exc
    return ray


def _standard_strides(array: np.ndarray) -> tuple[int, ...]:
    strides, step = [], array.itemsize
    for size in reversed(array.shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _restrided(array: np.ndarray, strides: tuple[int, ...]) -> np.ndarray:
    """``array`` with the strides it was put with (they differ only on axes of length 1, which address no memory)."""
    return np.lib.stride_tricks.as_strided(array, array.shape, strides)


def _dumps(value: Any) -> tuple[bytes, list[np.ndarray]]:
    """``value`` pickled (cloudpickle, protocol 5) with its arrays out of band, each array's strides kept.

    numpy's own pickling rebuilds a C-contiguous array with standard strides; an array whose axis of
    length 1 has another stride (``load_dataset``'s images have one) can make oneDNN take another
    convolution path for batches gathered from it, about 1e-6 apart
    (``tests/fingerprint/test_fanout_dataset.py``), so a task is handed the layout it would have in
    a forked worker.
    """
    from ray import cloudpickle

    class LayoutPickler(cloudpickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            if type(obj) is np.ndarray and obj.flags.c_contiguous and obj.ndim:
                standard = _standard_strides(obj)
                if obj.strides != standard:
                    return _restrided, (np.lib.stride_tricks.as_strided(obj, obj.shape, standard), obj.strides)
            return super().reducer_override(obj)

    buffers: list[pickle.PickleBuffer] = []
    out = io.BytesIO()
    LayoutPickler(out, protocol=5, buffer_callback=buffers.append).dump(value)
    return out.getvalue(), [np.frombuffer(b.raw(), dtype=np.uint8) for b in buffers]


def fetch(ref: Any) -> Any:
    """A shared input from the object store (called in a worker by :meth:`Shared.get`)."""
    payload, buffers = _ray().get(ref)
    return pickle.loads(payload, buffers=buffers)


def _ray_task(fn: Callable[..., Any], shared: Shared | None, item: Any) -> Any:
    """One attempt at a task in a Ray worker: one torch thread, as in a forked local worker."""
    import torch

    torch.set_num_threads(1)
    with warnings.catch_warnings():  # shared arrays are mapped read-only from the object store; tasks only read them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return run_task(fn, shared, item)


class RayExecutor:
    """Tasks as Ray tasks of ``cpus_per_task`` CPUs each, on the cluster at ``address``.

    ``address`` (else ``$TRACEMARK_RAY_ADDRESS``) is what ``ray.init(address=...)`` takes:
    ``ray://head:10001`` (Ray Client) or ``head:6379`` / ``auto`` on a cluster node. Without one, a
    Ray instance is started on this machine with ``workers`` CPUs (and shut down by :meth:`close`).
    If Ray is already initialised in this process, that instance is used and left running.
    Every node needs the same tracemark, torch and numpy versions as this machine.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, workers: int = 1, retries: int = DEFAULT_RETRIES,
                 cpus_per_task: float = 1.0):
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        ray = _ray()
        self.retries, self.cpus_per_task = int(retries), float(cpus_per_task)
        self.address = address or os.environ.get(ADDRESS_ENV) or None
        self._started = False
        if not ray.is_initialized():
            try:
                if self.address:
                    ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
                else:
                    ray.init(address="local", num_cpus=int(workers), include_dashboard=False, log_to_driver=False,
                             logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self.address or "this machine"
                raise ExecutorError(f"cannot start or reach Ray at {where}: {exc}") from exc
            self._started = True
        self._remote = ray.remote(_ray_task).options(num_cpus=self.cpus_per_task, max_retries=0)
        self._refs: dict[str, Any] = {}

    @property
    def workers(self) -> int:
        """Tasks the cluster can run at once (its CPUs over ``cpus_per_task``)."""
        cpus = float(_ray().cluster_resources().get("CPU", 1.0))
        return max(1, int(cpus // self.cpus_per_task))

    def put(self, value: Any) -> Shared:
        token = new_token()
        ref = _ray().put(_dumps(value))
        self._refs[token] = ref
        return Shared(token, ref)

    def release(self, shared: Shared) -> None:
        self._refs.pop(shared.token, None)

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *, shared: Shared | None = None,
            describe: Callable[[Any], str] = task_name, on_result: Callable[[Any, Any], None] | None = None,
            description: str = "tasks", show_progress: bool = False) -> list[Any]:
        """Run ``fn(shared value, item)`` for every item as Ray tasks (see :mod:`tracemark.executor.base`)."""
        ray = _ray()
        items = list(items)
        with progress_bar(len(items), description, enabled=show_progress) as advance:
            run = TaskRun(items, self.retries, describe, on_result, advance)
            pending = {self._remote.remote(fn, shared, item): i for i, item in enumerate(items)}
            try:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    index = pending.pop(ready[0])
                    try:
                        outcome = ray.get(ready[0])
                    except Exception as exc:  # the worker or its node died, or the result was lost
                        outcome = crashed(exc)
                    if run.settle(index, outcome):
                        pending[self._remote.remote(fn, shared, items[index])] = index
            finally:
                for ref in pending:
                    ray.cancel(ref)
        return run.finish()

    def close(self) -> None:
        self._refs.clear()
        if self._started:
            _ray().shutdown()
            self._started = False

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address or 'local'!r})"
