"""A step that runs the cache's disk full (a real ENOSPC, on a small tmpfs mounted in the test's
temporary dir) fails with one line that says the disk is full and where, and caches nothing."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from banger.core.store import Store
from banger.engine import doit_runner
from banger.engine.tasks import Build, step_task


def test_enospc_in_a_step_says_the_disk_is_full_and_where(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        store = Store(disk / "cache")
        build = Build(store, log=lambda m: None)

        def work(run):
            out = run.stage / "out"
            with open(out, "wb") as f:
                for _ in range(8):
                    f.write(bytes(1 << 20))
            return {"out": run.store.ingest_file(out)}

        def tasks():
            yield step_task(build, name="fill", version="1", work=work, inputs=lambda: {"seed": "x"})
            yield {"basename": "build", "actions": None, "task_dep": ["fill"]}

        assert doit_runner.run(build, tasks, tmp_path / "doit.db") != 0
        assert re.fullmatch(rf"step fill failed: the disk is full: {re.escape(str(disk))} ran out of space "
                            rf"for what it writes in {re.escape(str(store.root))}; "
                            r"free space on it \(`banger cache gc` frees banger's cache\) and run again",
                            build.error), build.error
        assert list(store.records()) == [] and list((store.root / "staging").iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)
