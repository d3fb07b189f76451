"""The builds-vs-gc lock between real processes: gc refuses (or waits) while builds hold it, and a
build that starts while gc runs waits for it and says so."""
from __future__ import annotations

import subprocess
import sys

import pytest

from banger.core import inflight
from tests.support_tools import REPO

HOLD = """
import sys
from banger.core import inflight
with inflight.{how}(sys.argv[1]{extra}):
    print("held", flush=True)
    sys.stdin.readline()
"""


def hold(cache, how: str, extra: str = "") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(how=how, extra=extra), str(cache)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def release(proc: subprocess.Popen) -> None:
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(timeout=60) == 0


def test_gc_refuses_at_once_naming_how_many_builds_hold_the_cache(tmp_path):
    builds = [hold(tmp_path, "building") for _ in range(2)]
    with pytest.raises(inflight.Busy) as exc:
        with inflight.collecting(tmp_path, wait=0):
            pass
    assert exc.value.builds == 2
    for b in builds:
        release(b)
    with inflight.collecting(tmp_path, wait=0):
        pass


def test_gc_waits_for_a_build_it_was_told_about(tmp_path):
    build = hold(tmp_path, "building")
    told: list[int] = []

    def on_wait(n: int) -> None:  # called once gc found the build; the build then ends
        told.append(n)
        release(build)

    with inflight.collecting(tmp_path, wait=600, on_wait=on_wait):
        assert told == [1]


def test_a_build_started_while_gc_runs_waits_for_it_and_says_so(tmp_path):
    gc = hold(tmp_path, "collecting", ", wait=0")
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        release(gc)

    with inflight.building(tmp_path, log):
        assert lines == ["waiting for `banger cache gc` to finish"]


def test_a_killed_build_leaves_nothing_locked(tmp_path):
    build = hold(tmp_path, "building")
    build.kill()
    build.wait(timeout=60)
    with inflight.collecting(tmp_path, wait=0):
        pass
