"""A VM's run dir and its logs: where a one-off boot keeps its console and VMM logs, and reading
the end of a (possibly large) log. (Re-exported by vm.py, where callers import them from.)"""
from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path

CONSOLE_TAIL_LINES = 40
KEEP_RUN_DIRS = 20  # console logs of past boot checks kept under <state>/boot-runs (VMs: <state>/vms)


def new_run_dir(state_dir: Path) -> Path:
    """<state>/boot-runs/<time>-<random>/, pruning the oldest ones beyond KEEP_RUN_DIRS."""
    base = Path(state_dir) / "boot-runs"
    base.mkdir(parents=True, exist_ok=True)
    old = sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: p.name)
    for stale in old[:max(0, len(old) - KEEP_RUN_DIRS + 1)]:
        shutil.rmtree(stale, ignore_errors=True)
    path = base / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    path.mkdir(mode=0o700)
    return path


def tail_lines(path: Path, n: int = CONSOLE_TAIL_LINES) -> list[str]:
    """The last n lines of a (possibly large) log, without reading all of it."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 256 * 1024))
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", "replace").replace("\r", "").split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines[-n:]
