"""One executor seam under the code that fans out: customer copies, lab suites, reference pools, benches.

The fan-out code states independent, seeded tasks; an executor decides where they run:
:class:`LocalExecutor` (forked processes on this machine, the default) or :class:`RayExecutor`
(a Ray cluster, ``pip install tracemark[ray]``). See docs/guide/executor.md.
"""

from tracemark.executor.base import DEFAULT_RETRIES, EXECUTORS, Executor, Shared, check_choice, executor_from, on_device
from tracemark.executor.errors import ExecutorError, TaskFailedError, TaskFailure
from tracemark.executor.local import LocalExecutor
from tracemark.executor.ray_cluster import RayExecutor  # imports Ray only when one is made

__all__ = [
    "DEFAULT_RETRIES",
    "EXECUTORS",
    "Executor",
    "ExecutorError",
    "LocalExecutor",
    "RayExecutor",
    "Shared",
    "TaskFailedError",
    "TaskFailure",
    "check_choice",
    "executor_from",
    "on_device",
]

