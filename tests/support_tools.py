"""Test helpers with no fixtures: where the repo and the fixture cache are, and `need`."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURE_CACHE = Path(os.environ.get("BANGER_TEST_FIXTURES", REPO / "cache" / "test-fixtures"))


def need(*tools: str) -> None:
    """Skip when a host tool is missing (CI installs them all, so there nothing skips)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing host tools: {', '.join(missing)} (scripts/setup.sh installs them)")
