"""Builds in flight vs `banger cache gc`: one cache-wide lock file, `<cache>/locks/builds.lock`.

A build holds a shared flock on it for its whole run (steps, then naming the image), so whatever
it has made but no named image references yet is never evicted under it; gc takes it exclusively,
so it waits for (or refuses while) builds run, and builds that start meanwhile wait for gc.
flock dies with its holder: a killed build never leaves the cache locked.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Callable, Iterator

from banger.core import cachedir

POLL = 0.2  # seconds between gc's tries while it waits for builds


class Busy(Exception):
    """Builds still hold the cache after gc waited as long as it was allowed to."""

    def __init__(self, builds: int):
        super().__init__(builds)
        self.builds = builds


def lock_path(cache: Path) -> Path:
    """The lock file, in a cache made (or adopted) first: the lock must not be what makes a new
    cache dir non-empty without its marker (core/cachedir.py)."""
    cachedir.open_cache(Path(cache))
    return Path(cache) / "locks" / "builds.lock"


@contextlib.contextmanager
def building(cache: Path, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Held by a build for its whole run (shared: builds run side by side)."""
    path = lock_path(cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            if log:
                log("waiting for `banger cache gc` to finish")
            fcntl.flock(f, fcntl.LOCK_SH)
        yield  # closing the file releases the lock


@contextlib.contextmanager
def collecting(cache: Path, wait: float, on_wait: Callable[[int], None] | None = None) -> Iterator[None]:
    """Held by gc (exclusive). Waits up to `wait` seconds for running builds (on_wait(N) is told
    once, when it starts waiting), then raises Busy(N)."""
    path = lock_path(cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        if not _try_exclusive(f):
            if wait <= 0:
                raise Busy(holders(path))
            if on_wait:
                on_wait(holders(path))
            deadline = time.monotonic() + wait
            while not _try_exclusive(f):
                if time.monotonic() >= deadline:
                    raise Busy(holders(path))
                time.sleep(POLL)
        yield


def _try_exclusive(f) -> bool:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def holders(path: Path) -> int:
    """How many builds hold the lock: processes with a granted shared flock on its inode in
    /proc/locks (a build may hold it twice); 0 when that cannot be told."""
    try:
        ino = os.stat(path).st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return 0
    pids = set()
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[3] == "READ" \
                and fields[5].rsplit(":", 1)[-1] == str(ino):
            pids.add(fields[4])
    return len(pids)
