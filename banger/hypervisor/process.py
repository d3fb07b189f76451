"""Starting a VMM process, two ways:
  - `spawn_attached`: the VMM dies with this process (PR_SET_PDEATHSIG) — the build's boot check;
  - `spawn_kept`: the VMM runs under keeper.py, tied to this process by a leash until `detach()`,
    then on its own — the VMs `banger vm` keeps.
Recognising it later (pid and start time) is banger.core.procs's.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from banger.core.procs import dies_with_parent

KEEPER = Path(__file__).with_name("keeper.py")


def spawn_attached(argv: Sequence[str], *, stdout, stderr, env: dict | None, cwd: Path,
                   stdin: int | None = None) -> subprocess.Popen:
    """The VMM in its own session (a Ctrl-C at the terminal reaches banger, not the VMM), killed
    by the kernel if banger dies. Its stdin: the file descriptor `stdin`, else /dev/null."""
    return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL if stdin is None else stdin, stdout=stdout, stderr=stderr,
                            start_new_session=True, preexec_fn=dies_with_parent(), env=env, cwd=cwd)


@dataclass
class Kept:
    keeper: subprocess.Popen  # the keeper process (its own session; the VMM is its child)
    vmm_pid: int
    leash: int | None  # write end of the leash pipe; None once detached

    def detach(self) -> None:
        """The VM is ready: from now on it outlives this process."""
        if self.leash is not None:
            with contextlib.suppress(OSError):
                os.write(self.leash, b"detach\n")
            os.close(self.leash)
            self.leash = None


def spawn_kept(argv: Sequence[str], *, exit_file: Path, stdout, stderr, env: dict | None, cwd: Path,
               stdin: int | None = None) -> Kept:
    """The VMM under the keeper. Until detach(), closing the leash (or this process dying) kills it.
    The VMM's stdin: the file descriptor `stdin` (handed to the keeper), else /dev/null."""
    leash_r, leash_w = os.pipe()
    report_r, report_w = os.pipe()
    os.set_inheritable(leash_w, False)
    given = () if stdin is None else ("--stdin-fd", str(stdin))
    try:
        keeper = subprocess.Popen(
            [sys.executable, "-I", "-S", str(KEEPER), str(exit_file), str(report_w), *given, "--", *argv],
            stdin=leash_r, stdout=stdout, stderr=stderr, start_new_session=True, env=env, cwd=cwd,
            pass_fds=(report_w,) + (() if stdin is None else (stdin,)))
    except BaseException:
        for fd in (leash_r, leash_w, report_r, report_w):
            os.close(fd)
        raise
    os.close(leash_r)
    os.close(report_w)
    with os.fdopen(report_r, "rb") as report:
        line = report.readline()
    if not line.strip().isdigit():
        os.close(leash_w)
        keeper.wait(10)
        raise OSError(f"the VMM did not start (keeper exited with code {keeper.returncode})")
    return Kept(keeper, int(line), leash_w)


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None
