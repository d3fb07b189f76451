"""Staging of a killed process is removed by the next process that opens the store (never a live
process's), and helpers a step starts die with it."""
import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

from banger.core import procs
from banger.core.store import Store
from tests.support_tools import REPO

HOLDER = """
import sys, time
from pathlib import Path
from banger.core.store import Store
store = Store(Path(sys.argv[1]), volatile=Path(sys.argv[2]) if len(sys.argv) > 2 else None)
with store.staging("ext4-") as stage:
    (stage / "image.ext4").write_bytes(b"x" * (1 << 20))
    tree = store.tree_staging(1) if store.ram else None
    path = tree.__enter__() if tree else None
    print(stage, path, flush=True)
    time.sleep(600)
"""


def hold_staging(*args: Path) -> tuple[subprocess.Popen, list[Path]]:
    """A process that made staging (in the cache, and in RAM when given a RAM dir) and waits."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, args)], stdout=subprocess.PIPE,
                            text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    paths = [Path(p) for p in proc.stdout.readline().split() if p != "None"]
    assert paths and all(p.is_dir() for p in paths), paths
    return proc, paths


def test_staging_of_a_killed_process_goes_at_the_next_open_and_a_live_ones_stays(tmp_path, ram_dir):
    cache = tmp_path / "cache"
    ram_dir.mkdir()
    ram = ram_dir / "banger-0-x"
    killed, dead_paths = hold_staging(cache, ram)
    live, live_paths = hold_staging(cache, ram)
    try:
        assert len(dead_paths) == 2 and dead_paths[1].is_relative_to(ram)  # in the cache and in RAM
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        (cache / "staging" / "partial-abc").write_bytes(b"a resumable download: no owner")
        Store(cache, volatile=ram)
        assert not any(p.exists() for p in dead_paths)
        assert all(p.is_dir() for p in live_paths)
        assert (cache / "staging" / "partial-abc").exists()
    finally:
        live.kill()
        live.wait()
    Store(cache, volatile=ram)
    assert not any(p.exists() for p in live_paths)


def test_owner_tags_tell_a_reused_pid_from_its_first_owner():
    me = procs.owner_tag()
    assert not procs.owner_gone(f"work-{me}-abc") and not procs.owner_gone("partial-abc")
    pid, started, ns = me[1:].split("-")
    assert procs.owner_gone(f"work-@{pid}-{int(started) + 1}-{ns}-abc")  # same pid, another process
    assert not procs.owner_gone(f"work-@{pid}-{int(started) + 1}-{int(ns) + 1}-abc")  # other namespace


def test_a_helper_dies_with_the_process_that_started_it(tmp_path):
    code = ("import subprocess, sys\nfrom banger.core import procs\n"
            "p = subprocess.Popen(['sleep', '600'], preexec_fn=procs.dies_with_parent())\n"
            "print(p.pid, flush=True)\np.wait()\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    helper = int(parent.stdout.readline())
    started = procs.start_time(helper)
    assert started is not None
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    try:
        assert wait_gone(helper, started)
    finally:
        procs.signal_process(helper, started, signal.SIGKILL)


def wait_gone(pid: int, started: int) -> bool:
    """True once the process has exited (its pidfd turns readable; the kernel queued the SIGKILL
    before the parent's wait() returned). Bounded, so a broken fix fails instead of hanging."""
    import select

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(60_000)) or not procs.alive(pid, started)
    finally:
        os.close(fd)


def test_every_helper_a_step_starts_dies_with_it():
    """Each subprocess.run/Popen in the packages steps use passes preexec_fn=dies_with_parent()."""
    missing = []
    for package in ("rootfs", "steps", "oci"):
        for path in sorted((REPO / "banger" / package).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                        and node.func.attr in ("run", "Popen") and getattr(node.func.value, "id", "") == "subprocess":
                    if not any(k.arg == "preexec_fn" for k in node.keywords):
                        missing.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert missing == []


def test_gc_never_sweeps_a_running_process_staging_however_old(tmp_path):
    import time

    from banger.app.cache import gc

    store = Store(tmp_path / "cache")
    week_ago = time.time() - 7 * 86400
    with store.staging("ext4-") as mine:
        orphan = store.root / "staging" / "partial-abc"  # nobody's: goes after a day
        orphan.write_bytes(b"x")
        for p in (mine, orphan):
            os.utime(p, (week_ago, week_ago))
        gc(store)
        assert mine.is_dir() and not orphan.exists()
