"""Progress for long work: rich bars on a terminal, a few plain lines otherwise."""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator

Report = Callable[[int, int], None]  # (done, total); total 0 = unknown


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@contextlib.contextmanager
def bar(label: str, total: int = 0, stream=None) -> Iterator[Report]:
    stream = stream or sys.stderr
    if stream.isatty():
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                   TimeRemainingColumn, TransferSpeedColumn)
        from rich.console import Console

        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), TimeRemainingColumn(),
                      console=Console(file=stream), transient=True) as progress:
            task = progress.add_task(label, total=total or None)

            def report(done: int, new_total: int = 0) -> None:
                progress.update(task, completed=done, total=new_total or total or None)

            yield report
        return
    start = time.monotonic()
    last = [0.0]

    def report(done: int, new_total: int = 0) -> None:
        now = time.monotonic()
        if now - last[0] >= 5:  # off a terminal: a line every 5 s at most
            last[0] = now
            size = new_total or total
            of = f" of {human_bytes(size)}" if size else ""
            print(f"  {label}: {human_bytes(done)}{of}", file=stream)

    last[0] = start
    yield report


@contextlib.contextmanager
def activity(label: str, stream=None) -> Iterator[None]:
    """A spinner with the elapsed time while a step without byte counts runs (terminal only;
    off a terminal the engine has already printed a "running STEP" line)."""
    stream = stream or sys.stderr
    if not stream.isatty():
        yield
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=Console(file=stream), transient=True) as progress:
        progress.add_task(label, total=None)
        yield
