"""After a build, nothing stays in RAM unless asked: the flattened tree (in the RAM dir) only feeds
the ext4 step, which is remade from the cached layers when it reruns."""
from __future__ import annotations

import dataclasses
import os

from banger.app.build import run_build
from banger.core.store import TREE, Store
from tests.support_builds import small_build  # noqa: F401 (a fixture)


def trees_in(ram) -> list[str]:
    return [p.name for alg in (ram / "trees").glob("*") for p in alg.iterdir()] if (ram / "trees").is_dir() else []


def test_a_build_leaves_no_tree_in_ram_and_a_rebuild_is_still_cached(small_build, ram_dir, monkeypatch):
    dirs, _, spec = small_build
    dirs = dataclasses.replace(dirs, trees=ram_dir)  # the real /dev/shm: a tree finds room there
    monkeypatch.delenv("BANGER_KEEP_TREES", raising=False)
    first = run_build(spec, dirs)
    assert any(s["status"] == "ran" for s in first.steps)
    assert trees_in(ram_dir) == []
    again = run_build(spec, dirs)
    assert {s["status"] for s in again.steps} == {"cached"}  # the tree is not needed for that
    # a change that reruns ext4 remakes the tree from the cached layers
    from banger.app.cache import usage

    assert usage(Store(dirs.cache, dirs.trees))["ram"] < 64 << 10  # at most the dir's own note
    assert spec.size is None
    bigger = run_build(dataclasses.replace(spec, size=64 << 20), dirs)
    assert {s["step"]: s["status"] for s in bigger.steps}["ext4"] == "ran"
    assert trees_in(ram_dir) == []


def test_banger_keep_trees_keeps_the_builds_tree(small_build, ram_dir, monkeypatch):
    dirs, _, spec = small_build
    dirs = dataclasses.replace(dirs, trees=ram_dir)
    monkeypatch.setenv("BANGER_KEEP_TREES", "1")
    record = run_build(spec, dirs)
    store = Store(dirs.cache, dirs.trees)
    flatten = next(s for s in record.steps if s["step"] == "flatten")
    tree = store.get_record(flatten["key"]).outputs["tree"]
    assert tree.startswith(TREE) and trees_in(ram_dir) == [tree.split(":", 1)[1]]
    assert os.path.isdir(store.path(tree))
    from banger.app.cache import usage

    assert usage(store)["ram"] > 4096 and usage(store)["ram_path"] == str(ram_dir)
