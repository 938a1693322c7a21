"""Errors of the executor seam."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tracemark.errors import TracemarkError


class ExecutorError(TracemarkError):
    """An executor cannot be made or reached (an unknown name, Ray not installed, a cluster that does not answer)."""


@dataclass(frozen=True)
class TaskFailure:
    """One task that failed for good: its inputs (as the fan-out code describes them), the error and the attempts made."""

    task: str
    error: str
    attempts: int

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.task}: {self.error} (after {self.attempts} attempt{'s' if self.attempts != 1 else ''})"


class TaskFailedError(ExecutorError):
    """Some tasks failed after their retries; every other task finished and its result was handed on (``on_result``).

    ``failures`` lists each failed task with its inputs; ``finished`` is how many tasks finished.
    """

    SHOWN = 3

    def __init__(self, failures: list[TaskFailure], finished: int, total: int):
        self.failures, self.finished, self.total = failures, finished, total
        shown = "; ".join(str(f) for f in failures[: self.SHOWN])
        more = f"; and {len(failures) - self.SHOWN} more" if len(failures) > self.SHOWN else ""
        super().__init__(f"{len(failures)} of {total} tasks failed ({finished} finished and were kept): {shown}{more}")
