"""Running commands in a running VM over SSH (the system `ssh`, banger's key and known_hosts):
the primitive workspaces, sessions and auth sync build on.
"""
from __future__ import annotations

import subprocess
from typing import IO

from banger.core.config import Dirs
from banger.vm import access, lifecycle
from banger.vm.records import VMRecord, VMStateError


def running(dirs: Dirs, name: str) -> VMRecord:
    """The VM's record, which must be running (one-line error otherwise)."""
    record = lifecycle.get(dirs, name)
    if record.state != "running":
        raise VMStateError(f"{name} is {record.state}; `banger vm start {name}` starts it")
    return record


def run(dirs: Dirs, record: VMRecord, script: str, *, input: bytes | None = None, stdin: IO | None = None,
        check: bool = True, capture: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run `script` with the guest's sh as root. With check, a failure is a VMStateError naming
    the command's stderr (one line)."""
    argv = access.ssh_argv(dirs, record, ["sh", "-c", script], tty=False)
    proc = subprocess.run(argv, input=input, stdin=stdin if input is None else None,
                          stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None,
                          timeout=timeout)
    if check and proc.returncode != 0:
        said = (proc.stderr or b"").decode("utf-8", "replace").strip().splitlines()
        raise VMStateError(f"in {record.name}: `{script.splitlines()[0][:60]}` failed with exit code "
                           f"{proc.returncode}" + (f": {said[-1]}" if said else ""))
    return proc
