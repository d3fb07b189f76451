"""Shared fixtures. Expensive ones (real Debian image, kernel) are session-scoped and cached on
disk under cache/test-fixtures/ so a second test run reuses them."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from banger import devregistry

REPO = Path(__file__).resolve().parent.parent
FIXTURE_CACHE = Path(os.environ.get("BANGER_TEST_FIXTURES", REPO / "cache" / "test-fixtures"))


def need(*tools: str) -> None:
    """Skip when a host tool is missing (CI installs them all, so there nothing skips)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing host tools: {', '.join(missing)} (scripts/setup.sh installs them)")


@pytest.fixture(scope="session")
def fixture_cache() -> Path:
    FIXTURE_CACHE.mkdir(parents=True, exist_ok=True)
    return FIXTURE_CACHE


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """A real docker-registry on a free loopback port, for the whole session."""
    need("docker-registry")
    reg = devregistry.start(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """A fresh banger cache (and XDG dirs) for one test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("BANGER_CACHE_DIR", str(cache))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return cache
