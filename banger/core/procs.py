"""Recognising a process later: a pid alone does not identify one (pids are reused), so records
keep the pid with its start time (`/proc/PID/stat` field 22, clock ticks since boot). Staging
names carry the same (owner_tag), and helpers a step starts die with it (dies_with_parent)."""
from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
from typing import Callable


def start_time(pid: int) -> int | None:
    """The process's start time, or None when there is no such process (or only its zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # field 2 (comm) is in parentheses and may hold spaces: split after its last ')'
    fields = stat[stat.rfind(b")") + 2:].split()
    if not fields or fields[0] == b"Z":  # a zombie has exited already
        return None
    return int(fields[19])


def alive(pid: int | None, started: int | None) -> bool:
    """Is the process `pid` that started at `started` still running (not a reused pid)?"""
    return bool(pid) and started is not None and start_time(pid) == started


def signal_process(pid: int, started: int | None, sig: int) -> bool:
    """Send `sig` to pid only if it is still the same process; True if sent."""
    if not alive(pid, started):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
        return True
    return False


# ---- owned names: staging left by a process that is gone --------------------------------------
_OWNER_RE = re.compile(r"@(\d+)-(\d+)-(\d+)(?!\d)")


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def owner_tag() -> str:
    """"@<pid>-<start time>-<pid namespace>": put in the name of a staging file or dir, it lets a
    later process tell that its owner is gone (owner_gone) without mistaking a reused pid."""
    pid = os.getpid()
    return f"@{pid}-{start_time(pid) or 0}-{_pid_namespace()}"


def owner_alive(name: str) -> bool:
    """True if `name` carries the owner_tag of a process of this pid namespace still running."""
    m = _OWNER_RE.search(name)
    if m is None:
        return False
    pid, started, namespace = map(int, m.groups())
    return namespace == _pid_namespace() and alive(pid, started)


def owner_gone(name: str) -> bool:
    """True if `name` carries an owner_tag of a process that is no longer running. False when it
    carries none, or one from another pid namespace (a container: its pids mean nothing here)."""
    m = _OWNER_RE.search(name)
    if m is None:
        return False
    pid, started, namespace = map(int, m.groups())
    return namespace == _pid_namespace() and not alive(pid, started)


# ---- helpers that die with their parent ---------------------------------------------------------
PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl():
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl


def dies_with_parent() -> Callable[[], None]:
    """A preexec_fn for subprocess: the kernel SIGKILLs the child when the thread that started it
    ends, however it ends (a SIGKILLed build leaves no debugfs or mke2fs behind)."""
    prctl = _prctl()  # resolved here, in the parent: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGKILL)
    return preexec
