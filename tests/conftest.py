"""Shared fixtures. Expensive ones (real Debian image, kernel) are session-scoped and cached on
disk under cache/test-fixtures/ so a second test run reuses them."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from banger.devtools import registry as devregistry
from tests.support_tools import FIXTURE_CACHE, REPO, need  # noqa: F401  (re-exported for tests)
from tests.support_images import debian_image_ref, debian_layout  # noqa: F401,E402  (session fixtures)
from tests.support_kernel import busybox_static, debian_bundle, debian_kernel_deb  # noqa: F401,E402


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
def ram_dir() -> Path:
    """A not-yet-existing directory on the real /dev/shm (tmpfs), removed afterwards."""
    from banger.core import config
    from banger.core.fsutil import remove_tree

    if not (config.SHM.is_dir() and os.access(config.SHM, os.W_OK)):
        pytest.skip("no writable /dev/shm on this host")
    parent = Path(tempfile.mkdtemp(prefix="banger-test-", dir=config.SHM))
    yield parent / "ram"
    remove_tree(parent)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """A fresh banger cache (and XDG dirs) for one test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("BANGER_CACHE_DIR", str(cache))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return cache


@pytest.fixture(scope="session", autouse=True)
def _no_ram_trees_left_behind(tmp_path_factory):
    """Builds that used a cache under pytest's temporary dirs keep their flattened trees in RAM
    (/dev/shm/banger-<uid>-<id>/); remove those at the end, whichever test forgot."""
    yield
    from banger.core import config
    from banger.core.fsutil import remove_tree

    base = str(tmp_path_factory.getbasetemp().resolve())
    for ram in config.SHM.glob(f"banger-{os.getuid()}-*"):
        try:
            owner = (ram / "cache-dir").read_text().strip()
        except OSError:
            continue
        if owner == base or owner.startswith(base + os.sep):
            remove_tree(ram)
