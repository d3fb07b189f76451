"""The keeper, with a real child (`sleep`) standing in for the VMM: the leash kills it until
detach, after detach it outlives its starter, and its exit status is written either way."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from banger.core import procs
from banger.hypervisor import process


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _spawn(tmp_path: Path, argv=("sleep", "300")) -> process.Kept:
    return process.spawn_kept(list(argv), exit_file=tmp_path / "exit.json", stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=None, cwd=tmp_path)


def _starter(tmp_path: Path, then: str) -> str:
    """A Python program that starts `sleep 300` under the keeper, then runs `then`."""
    return (f"import subprocess, sys, time; from pathlib import Path; from banger.hypervisor import process\n"
            f"k = process.spawn_kept(['sleep', '300'], exit_file=Path({str(tmp_path / 'exit.json')!r}),"
            f" stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=None, cwd=Path({str(tmp_path)!r}))\n"
            f"{then}\n")


def test_closing_the_leash_before_detach_kills_the_vmm_and_records_it(tmp_path):
    kept = _spawn(tmp_path)
    started = procs.start_time(kept.vmm_pid)
    assert procs.alive(kept.vmm_pid, started)
    os.close(kept.leash)
    kept.keeper.wait(10)
    assert not procs.alive(kept.vmm_pid, started)
    status = json.loads((tmp_path / "exit.json").read_text())
    assert status["returncode"] == -signal.SIGKILL and status["detached"] is False


def test_a_detached_vmm_outlives_the_process_that_started_it(tmp_path):
    # the starter is a separate Python process that detaches and exits
    out = subprocess.run([sys.executable, "-c", _starter(tmp_path, "k.detach(); print(k.vmm_pid)")], capture_output=True, text=True, timeout=30,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout)
    started = procs.start_time(pid)
    try:
        time.sleep(0.3)
        assert procs.alive(pid, started), "the VMM died with its starter"
        assert not (tmp_path / "exit.json").exists()
    finally:
        os.kill(pid, signal.SIGKILL)
    _wait(lambda: (tmp_path / "exit.json").exists())
    status = json.loads((tmp_path / "exit.json").read_text())
    assert status["returncode"] == -signal.SIGKILL and status["detached"] is True


def test_sigkill_of_the_starter_before_detach_leaves_no_vmm(tmp_path):
    starter = subprocess.Popen([sys.executable, "-c", _starter(tmp_path, "print(k.vmm_pid, flush=True); time.sleep(300)")], stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parents[2])
    pid = int(starter.stdout.readline())
    started = procs.start_time(pid)
    assert procs.alive(pid, started)
    starter.kill()
    starter.wait()
    _wait(lambda: not procs.alive(pid, started))
    _wait(lambda: (tmp_path / "exit.json").exists())


def test_the_keeper_reports_a_clean_exit(tmp_path):
    kept = _spawn(tmp_path, ("sh", "-c", "exit 0"))
    kept.detach()
    kept.keeper.wait(10)
    assert json.loads((tmp_path / "exit.json").read_text())["returncode"] == 0


def test_a_reused_pid_is_not_the_same_process(tmp_path):
    me = os.getpid()
    assert procs.alive(me, procs.start_time(me))
    assert not procs.alive(me, procs.start_time(me) + 1)
    assert procs.start_time(2 ** 22 + 12345) is None
    assert not procs.alive(0, None)
