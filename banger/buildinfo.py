"""Version, git commit and build date: baked in by setup.py at build time, else read from git."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from . import __version__  # relative: setup.py loads this file inside a stub package

BAKED = Path(__file__).with_name("_build_info.json")


def from_git(where: Path) -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True,
                              timeout=5).stdout.strip()
    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        date = git("log", "-1", "--format=%cI")
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if not commit:
        return {}
    return {"commit": commit + ("-dirty" if dirty else ""), "build_date": date}


def info() -> dict:
    data = {"version": __version__, "commit": "unknown", "build_date": "unknown"}
    if BAKED.exists():
        data.update(json.loads(BAKED.read_text()))
    else:
        data.update(from_git(Path(__file__).resolve().parent))
    return data


def bake(package_dir: Path, source_dir: Path) -> None:
    """Called by setup.py when building a wheel."""
    data = from_git(source_dir) or {"commit": "unknown"}
    data["build_date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (package_dir / BAKED.name).write_text(json.dumps(data))
