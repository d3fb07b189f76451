"""The cache dir is relocatable: CI systems restore it under another path (new inodes, new
ctimes, maybe new mtimes); a copy of a warm cache is fully cached there."""
from __future__ import annotations

import dataclasses
import shutil

import pytest

from banger.app import build as build_app
from banger.core import images
from banger.core.store import Store
from tests.support_builds import small_build  # noqa: F401  (a fixture)


@pytest.mark.parametrize("copy", [shutil.copy2, shutil.copy], ids=["times kept", "times new"])
def test_a_copied_cache_dir_is_fully_cached(small_build, tmp_path, copy):
    dirs, env, spec = small_build
    first = build_app.run_build(spec, dirs, log=lambda m: None)
    moved = dataclasses.replace(dirs, cache=tmp_path / "restored" / "cache")
    shutil.copytree(dirs.cache, moved.cache, symlinks=True, copy_function=copy)
    again = build_app.run_build(spec, moved, log=lambda m: None)
    assert {s["status"] for s in again.steps} == {"cached"}
    assert again.artifacts == first.artifacts
    store = Store(moved.cache)
    assert images.load(store, "small").artifacts == first.artifacts
    assert store.path(first.artifacts["rootfs"]).is_relative_to(moved.cache)
