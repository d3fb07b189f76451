"""Test helpers with no fixtures: where the repo and the fixture cache are, and `need`."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURE_CACHE = Path(os.environ.get("BANGER_TEST_FIXTURES", REPO / "cache" / "test-fixtures"))


def need(*tools: str) -> None:
    """Skip when a host tool is missing (CI installs them all, so there nothing skips)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing host tools: {', '.join(missing)} (scripts/setup.sh installs them)")


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str, mode: str = "0755"):
    """A tmpfs of `size` mounted at `path` (made here) for the test's duration: a real small disk
    to fill (the tests run as root; skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir(parents=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode={mode}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)
