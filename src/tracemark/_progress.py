"""Progress display that can be switched off for library use and tests.

On a terminal: a rich progress bar on stderr. Elsewhere (a log file, CI, a pipe), where a live
bar shows nothing: plain lines on stderr at every tenth of the work and at least every
:data:`LINE_EVERY_S` seconds.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

LINE_EVERY_S = 30.0


@contextmanager
def progress_bar(total: int, description: str, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n=1)``; shows progress on stderr when ``enabled`` (a bar on a terminal, lines elsewhere)."""
    if not enabled:
        yield lambda n=1: None
        return
    if not sys.stderr.isatty():
        with _progress_lines(total, description) as advance:
            yield advance
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


@contextmanager
def _progress_lines(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """``description: 30% (300/1000), 12 s`` lines at each tenth of ``total`` or every :data:`LINE_EVERY_S` seconds."""
    start = last_time = time.monotonic()
    done = 0
    last_tenth = 0

    def line() -> None:
        share = done / total if total else 1.0
        print(f"{description}: {share:.0%} ({done}/{total}), {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)

    def advance(n: int = 1) -> None:
        nonlocal done, last_tenth, last_time
        done += n
        tenth = 10 * done // total if total else 10
        now = time.monotonic()
        if tenth > last_tenth or now - last_time >= LINE_EVERY_S:
            last_tenth, last_time = tenth, now
            line()

    yield advance
    if done < total:  # stopped early (a goal reached, an error): say where
        line()
