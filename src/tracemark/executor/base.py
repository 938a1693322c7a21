"""The executor seam: fan-out code states independent, seeded tasks; an executor decides where they run.

A task is a module-level function and one picklable item (a customer id, an attack's index, a
reference model's seed): everything random in it is seeded from the item and the shared inputs,
so it gives the same bytes wherever it runs. Large inputs every task reads (the base model, the
data, a feature cache) are :meth:`Executor.put` once and handed to each task as a :class:`Shared`
handle, never pickled per task. :meth:`Executor.map` runs the tasks, hands each result to
``on_result`` in this process as it completes (so a registry gets each copy as it is made), runs
a failed task again (up to ``retries`` times; a task that raised a
:class:`~tracemark.errors.TracemarkError`, a problem with its inputs, is not run again) and in the
end raises :class:`~tracemark.executor.errors.TaskFailedError` naming the inputs of each task that
still failed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from tracemark.errors import TracemarkError
from tracemark.executor.errors import ExecutorError, TaskFailedError, TaskFailure

DEFAULT_RETRIES = 2
EXECUTORS = ("local", "ray")

# Shared inputs of this process: put here by the driver (forked workers inherit them) or, in a Ray
# worker, fetched once from the object store and kept for the next tasks (the latest few only).
_VALUES: dict[str, Any] = {}
_FETCHED: list[str] = []
KEEP_FETCHED = 4


@dataclass(frozen=True)
class Shared:
    """A large input put once by :meth:`Executor.put`; it pickles as this handle, never as the value.

    ``ref`` is where a worker that did not inherit the value fetches it (a Ray object reference).
    """

    token: str
    ref: Any = None

    def get(self) -> Any:
        """The value: this process's copy, else fetched once from the object store and kept."""
        if self.token in _VALUES:
            return _VALUES[self.token]
        if self.ref is None:
            raise ExecutorError(f"shared input {self.token} is not in this process: it was released, or this worker "
                                "was not forked from the process that put it")
        from tracemark.executor.ray_cluster import fetch

        value = fetch(self.ref)
        _VALUES[self.token] = value
        _FETCHED.append(self.token)
        while len(_FETCHED) > KEEP_FETCHED:
            _VALUES.pop(_FETCHED.pop(0), None)
        return value


def new_token() -> str:
    """A fresh, unique name for a shared input."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Outcome:
    """What one attempt at a task gave: its value, or the error and whether running it again could help."""

    value: Any = None
    error: str | None = None
    retry: bool = False


def run_task(fn: Callable[..., Any], shared: Shared | None, item: Any) -> Outcome:
    """Run ``fn(shared value, item)`` (``fn(item)`` without ``shared``) and catch its error as an :class:`Outcome`."""
    try:
        return Outcome(fn(item) if shared is None else fn(shared.get(), item))
    except Exception as exc:  # reported with the task's inputs by the driver, which decides on a retry
        return Outcome(error=f"{type(exc).__name__}: {exc}", retry=not isinstance(exc, TracemarkError))


def crashed(exc: BaseException) -> Outcome:
    """The outcome of an attempt whose worker died or whose result never came back (worth another attempt)."""
    return Outcome(error=f"worker lost ({type(exc).__name__}: {exc})", retry=True)


class TaskRun:
    """Bookkeeping of one :meth:`Executor.map`: results by index, attempts, failures, progress and ``on_result``."""

    def __init__(self, items: Sequence[Any], retries: int, describe: Callable[[Any], str],
                 on_result: Callable[[Any, Any], None] | None, advance: Callable[[int], None]):
        self.items, self.retries, self.describe = items, retries, describe
        self.on_result, self.advance = on_result, advance
        self.results: dict[int, Any] = {}
        self.attempts = [0] * len(items)
        self.failures: dict[int, TaskFailure] = {}

    def settle(self, index: int, outcome: Outcome) -> bool:
        """Record one attempt's outcome; True when the task should be run again."""
        self.attempts[index] += 1
        if outcome.error is None:
            self.results[index] = outcome.value
            if self.on_result is not None:
                self.on_result(self.items[index], outcome.value)
            self.advance(1)
            return False
        if outcome.retry and self.attempts[index] <= self.retries:
            return True
        self.failures[index] = TaskFailure(self.describe(self.items[index]), outcome.error, self.attempts[index])
        self.advance(1)
        return False

    def finish(self) -> list[Any]:
        """The results in the order of the items, or :class:`TaskFailedError` if any task failed for good."""
        if self.failures:
            raise TaskFailedError([self.failures[i] for i in sorted(self.failures)], len(self.results), len(self.items))
        return [self.results[i] for i in range(len(self.items))]


def task_name(item: Any) -> str:
    """How a failed task's inputs are named by default: the item's repr, at most 200 characters."""
    text = repr(item)
    return text if len(text) <= 200 else text[:199] + "…"


class Executor(Protocol):
    """Where fan-out tasks run: :class:`~tracemark.executor.LocalExecutor` or :class:`~tracemark.executor.RayExecutor`."""

    name: str
    retries: int

    @property
    def workers(self) -> int:
        """How many tasks can run at once."""

    def put(self, value: Any) -> Shared:
        """Share a large input with every task once; tasks get it from the handle."""

    def release(self, shared: Shared) -> None:
        """Drop a shared input once no task needs it."""

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *, shared: Shared | None = None,
            describe: Callable[[Any], str] = task_name, on_result: Callable[[Any, Any], None] | None = None,
            description: str = "tasks", show_progress: bool = False) -> list[Any]:
        """Run ``fn(shared value, item)`` for every item; results in the items' order (see the module docstring)."""

    def close(self) -> None:
        """Let go of the workers (and of a Ray instance this executor started)."""


def check_choice(name: str, address: str | None = None) -> None:
    """Refuse, before any work, an unknown executor name, a Ray address for the local one, or ray without Ray."""
    if name not in EXECUTORS:
        raise ExecutorError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
    if name == "local" and address is not None:
        raise ExecutorError("a Ray address is for the ray executor; the local executor runs on this machine")
    if name == "ray":
        from tracemark.executor.ray_cluster import _ray

        _ray()


def executor_from(name: str = "local", *, workers: int = 1, address: str | None = None,
                  retries: int = DEFAULT_RETRIES) -> Executor:
    """The executor called ``name``: ``local`` (``workers`` forked processes) or ``ray`` (a Ray cluster at ``address``,
    else ``$TRACEMARK_RAY_ADDRESS``, else a Ray started on this machine with ``workers`` CPUs)."""
    check_choice(name, address)
    if name == "local":
        from tracemark.executor.local import LocalExecutor

        return LocalExecutor(workers, retries=retries)
    from tracemark.executor.ray_cluster import RayExecutor

    return RayExecutor(address, workers=workers, retries=retries)


def on_device(executor: Executor | None, device_type: str, workers: int = 1) -> Executor:
    """The executor for work on a ``device_type`` device: ``executor`` (or a local pool of ``workers``) on the CPU;
    on a GPU, tasks run one after another in this process (forked processes cannot share the device)."""
    from tracemark.executor.local import LocalExecutor

    if device_type == "cpu":
        return executor if executor is not None else LocalExecutor(workers)
    if executor is None or isinstance(executor, LocalExecutor):
        return LocalExecutor(1)
    raise ExecutorError(f"the {executor.name} executor runs tasks on CPU workers; give device cpu (--device cpu) "
                        f"or the local executor for {device_type}")
