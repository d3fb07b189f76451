"""Recognising a process later: a pid alone does not identify one (pids are reused), so records
keep the pid with its start time (`/proc/PID/stat` field 22, clock ticks since boot)."""
from __future__ import annotations

import contextlib
import os


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
