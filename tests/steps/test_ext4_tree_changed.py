"""A tree written to while the ext4 step reads it: the step fails with one line, caches nothing
(no image, no record) and drops the tree; the post-read check reads again only what changed."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from banger.core import digest as dg
from banger.core import store as store_mod
from banger.core.errors import BuildError
from banger.core.store import ActionRecord, Store
from banger.engine.spec import BuildSpec
from banger.engine.tasks import Build
from banger.oci import fsmeta
from banger.steps import ext4
from tests.conftest import need
from tests.steps.test_ext4 import make_tree


def stored_tree(tmp_path: Path) -> tuple[Store, str, str]:
    store = Store(tmp_path / "cache")
    tree = tmp_path / "tree"
    make_tree(tree)
    entries = [fsmeta.Entry(".", "dir", 0o755)]
    fsmeta.write(tmp_path / "meta", entries)
    meta = store.ingest_file(tmp_path / "meta")
    return store, store.ingest_tree(tree), meta


def ext4_build(store: Store, tree: str, meta: str) -> Build:
    build = Build(store, log=lambda m: None)
    build.records["flatten"] = ActionRecord(key="f", step="flatten", step_version="1", inputs={}, params={},
                                            tools={}, outputs={"tree": tree, "meta": meta})
    list(ext4.tasks(build, BuildSpec(image="test")))
    return build


@pytest.mark.parametrize("change", ["same size", "appended", "new file"])
def test_a_tree_changed_while_ext4_reads_it_fails_the_step_and_caches_nothing(tmp_path, monkeypatch, change):
    need("mke2fs", "debugfs", "e2fsck", "dumpe2fs")
    store, tree, meta = stored_tree(tmp_path)
    before = set(store.artifacts())
    real = ext4.build_ext4

    def build_then_write(tree_dir: Path, *args, **kwargs):
        info = real(tree_dir, *args, **kwargs)  # the image holds the tree as it was read
        target = tree_dir / "etc" / "hostname"
        if change == "same size":
            os.chmod(target, 0o644)
            with open(target, "r+b") as f:
                f.write(b"X")  # same size, a moment later: only the content tells
        elif change == "appended":
            with open(target, "ab") as f:
                f.write(b"more\n")
        else:
            (tree_dir / "etc" / "new").write_text("new\n")
        return info

    monkeypatch.setattr(ext4, "build_ext4", build_then_write)
    build = ext4_build(store, tree, meta)
    step = build.steps["ext4"]
    with pytest.raises(BuildError) as exc:
        build.execute(step)
    assert str(exc.value) == ("the flattened tree changed while the ext4 step read it (something wrote into the "
                              "cache); nothing was cached and the tree was dropped: run the build again")
    assert store.get_record(step.key()) is None
    assert set(store.artifacts()) == before - {tree}  # no image; the changed tree is gone (it is corrupt)


def test_the_post_read_check_reads_only_files_whose_stat_changed(tmp_path, monkeypatch):
    store, tree, _ = stored_tree(tmp_path)
    monkeypatch.setattr(Store, "RACY_NS", -(1 << 62))  # as if the tree had been written long ago
    store.verify(tree, full=True)  # hashed (and its files' stat remembered) as a cached tree is
    reads: list[Path] = []
    real = dg.of_file
    monkeypatch.setattr(store_mod.dg, "of_file", lambda p, alg: (reads.append(p), real(p, alg))[1])
    assert store.tree_intact(tree) and reads == []
    with open(store.path(tree) / "usr" / "lib" / "zeros", "ab") as f:
        f.write(b"+")
    assert not store.tree_intact(tree)
    assert [p.name for p in reads] == ["zeros"]
    assert not store.path(tree).exists()


def test_files_changed_just_before_the_walk_are_always_read_again(tmp_path, monkeypatch):
    """Their ctime may not move on a second write within the same clock tick (racy files)."""
    store, tree, _ = stored_tree(tmp_path)  # every file was written just now
    reads: list[Path] = []
    real = dg.of_file
    monkeypatch.setattr(store_mod.dg, "of_file", lambda p, alg: (reads.append(p), real(p, alg))[1])
    assert store.tree_intact(tree)
    regular = [Path(d, f) for d, _, files in os.walk(store.path(tree)) for f in files if not Path(d, f).is_symlink()]
    assert sorted(reads) == sorted(regular)
