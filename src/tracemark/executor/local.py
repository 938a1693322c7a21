"""The local executor: tasks in forked worker processes on this machine (or one after another in this process)."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from typing import Any, Callable, Sequence

from tracemark._progress import progress_bar
from tracemark.executor.base import DEFAULT_RETRIES, Outcome, Shared, TaskRun, _VALUES, crashed, new_token, run_task, task_name


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


class LocalExecutor:
    """Tasks in ``workers`` processes forked from this one, one torch thread each (``workers=1``: in this process).

    Shared inputs are put in this process's memory; forked workers read them copy-on-write, so
    nothing large is pickled. A worker that dies (killed, out of memory) breaks the pool: the pool
    is made again and its unfinished tasks count one attempt each.
    """

    name = "local"

    def __init__(self, workers: int = 1, *, retries: int = DEFAULT_RETRIES):
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        self._workers, self.retries = int(workers), int(retries)
        self._tokens: set[str] = set()

    @property
    def workers(self) -> int:
        return self._workers

    def put(self, value: Any) -> Shared:
        token = new_token()
        _VALUES[token] = value
        self._tokens.add(token)
        return Shared(token)

    def release(self, shared: Shared) -> None:
        _VALUES.pop(shared.token, None)
        self._tokens.discard(shared.token)

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *, shared: Shared | None = None,
            describe: Callable[[Any], str] = task_name, on_result: Callable[[Any, Any], None] | None = None,
            description: str = "tasks", show_progress: bool = False) -> list[Any]:
        """Run ``fn(shared value, item)`` for every item (see :mod:`tracemark.executor.base`)."""
        items = list(items)
        with progress_bar(len(items), description, enabled=show_progress) as advance:
            run = TaskRun(items, self.retries, describe, on_result, advance)
            if self._workers == 1 or len(items) <= 1:
                for i, item in enumerate(items):
                    while run.settle(i, run_task(fn, shared, item)):
                        pass
            else:
                self._in_pool(run, fn, shared, list(range(len(items))))
        return run.finish()

    def _in_pool(self, run: TaskRun, fn: Callable[..., Any], shared: Shared | None, todo: list[int]) -> None:
        """Run the tasks at ``todo`` in forked pools: again in a fresh pool, those that failed and may be retried."""
        context = multiprocessing.get_context("fork")
        while todo:
            again: list[int] = []
            pool = ProcessPoolExecutor(max_workers=min(self._workers, len(todo)), mp_context=context,
                                       initializer=_init_worker)
            try:
                futures: dict[Future, int] = {pool.submit(run_task, fn, shared, run.items[i]): i for i in todo}
                for future in as_completed(futures):
                    try:
                        outcome: Outcome = future.result()
                    except Exception as exc:  # the pool broke (a worker died) or the result did not come back
                        outcome = crashed(exc)
                    if run.settle(futures[future], outcome):
                        again.append(futures[future])
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            todo = sorted(again)

    def close(self) -> None:
        for token in list(self._tokens):
            _VALUES.pop(token, None)
        self._tokens.clear()

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LocalExecutor(workers={self._workers})"
