"""RAM trees never reach outside banger's own dirs: a planted symlink or another user's dir is
refused (and said so), never followed, never chmodded."""
import os
import stat
from pathlib import Path

import pytest

from banger.core.fsutil import remove_tree
from banger.core.store import Store

OTHER_UID = 54321


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def another_caches_trees(root: Path) -> Path:
    """What a planted symlink points at: a tree in another cache's layout, with files."""
    tree = root / "blake3" / ("ab" * 32)
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    return root


def test_a_planted_trees_symlink_is_not_followed_by_eviction(tmp_path, ram_dir):
    ram_dir.mkdir()
    ram = ram_dir / "banger-0-mine"
    store = Store(tmp_path / "cache", volatile=ram)
    with store.tree_staging(1):  # makes the RAM dirs, ours and private
        pass
    other = another_caches_trees(tmp_path / "other-cache-trees")
    before = files_under(other)
    os.rmdir(ram / "trees")
    (ram / "trees").symlink_to(other)

    assert store.evict_volatile_trees() == []
    assert files_under(other) == before
    assert not store.path("tree+blake3:" + "ab" * 32).is_relative_to(other)
    store.remove("tree+blake3:" + "ab" * 32)  # a gc of this cache: not through the link either
    assert files_under(other) == before
    assert "trees" in store.ram.refused and "symlink" in store.ram.refused


def test_a_ram_dir_planted_by_another_user_is_refused_and_reported(tmp_path, ram_dir):
    ram = ram_dir / "banger-0-mine"
    another_caches_trees(ram / "trees")
    (ram / "staging" / "tree-1-x").mkdir(parents=True)
    for p in [ram, *ram.rglob("*")]:
        os.chown(p, OTHER_UID, OTHER_UID, follow_symlinks=False)
    os.chmod(ram, 0o700)
    before = files_under(ram)
    store = Store(tmp_path / "cache", volatile=ram)

    with store.tree_staging(1) as stage:  # trees go to the cache instead
        assert stage.is_relative_to(tmp_path / "cache" / "staging")
    assert store.evict_volatile_trees() == []
    assert files_under(ram) == before
    assert str(ram) in store.ram.refused and str(OTHER_UID) in store.ram.refused
    assert "\n" not in store.ram.refused


def test_the_orphan_sweep_never_follows_a_sibling_symlink_nor_chmods_the_shared_parent(tmp_path, ram_dir):
    shm = ram_dir  # stands in for /dev/shm: shared, sticky, not banger's (on tmpfs: room for trees)
    shm.mkdir()
    os.chmod(shm, 0o1777)
    store = Store(tmp_path / "cache", volatile=shm / "banger-0-mine")
    with store.tree_staging(1):
        pass
    elsewhere = another_caches_trees(tmp_path / "elsewhere")
    (elsewhere / "cache-dir").write_text(str(tmp_path / "deleted-cache"))  # looks orphaned
    before = files_under(elsewhere)
    (shm / "banger-0-planted").symlink_to(elsewhere)

    store.evict_volatile_trees()
    assert stat.S_IMODE(shm.stat().st_mode) == 0o1777
    assert files_under(elsewhere) == before


def test_remove_tree_removes_a_link_not_its_target_and_leaves_the_parent_mode_alone(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    target = another_caches_trees(tmp_path / "target")
    before = files_under(target)
    (shared / "link").symlink_to(target)
    os.chmod(shared, 0o1777)

    remove_tree(shared / "link")
    assert not os.path.lexists(shared / "link")
    assert files_under(target) == before
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777


def test_remove_tree_still_removes_read_only_dirs_inside(tmp_path):
    top = tmp_path / "top"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "f").write_text("x")
    (top / "a" / "link").symlink_to(tmp_path)
    for d in (top / "a" / "b", top / "a", top):
        os.chmod(d, 0o500)
    os.chmod(tmp_path, 0o755)
    remove_tree(top)
    assert not top.exists() and stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


@pytest.fixture
def reachable_dir():
    """A temporary dir other users can traverse (pytest's own are root's alone)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="banger-test-"))
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path)


def test_remove_tree_as_an_ordinary_user_opens_read_only_dirs_inside_only(reachable_dir):
    """Without root's override, read-only dirs of the tree are opened up to empty them; the
    parent (here the user's own, writable) keeps its mode."""
    import subprocess
    import sys

    from tests.support_tools import REPO

    nobody = 65534
    home = reachable_dir / "home"
    top = home / "tree"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "f").write_text("x")
    (top / "a" / "unreadable" / "c").mkdir(parents=True)
    (top / "a" / "unreadable" / "c" / "g").write_text("y")
    for p in [home, *home.rglob("*")]:
        os.chown(p, nobody, nobody)
    for d in (top / "a" / "b", top / "a", top):
        os.chmod(d, 0o500)
    os.chmod(top / "a" / "unreadable", 0)
    os.chmod(home, 0o755)
    code = ("import os, sys\nfrom banger.core.fsutil import remove_tree\n"  # imported as root: any checkout
            "os.setgid(65534); os.setuid(65534)\nremove_tree(sys.argv[1])\n")
    proc = subprocess.run([sys.executable, "-c", code, str(top)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not top.exists() and stat.S_IMODE(home.stat().st_mode) == 0o755


def test_any_store_opened_sweeps_the_ram_dirs_of_deleted_caches(tmp_path, ram_dir):
    """Not only a build: opening the store (every banger command does) frees a deleted cache's RAM."""
    ram_dir.mkdir()
    gone_cache, kept_cache = tmp_path / "gone-cache", tmp_path / "kept-cache"
    kept_cache.mkdir()
    for name, cache in (("banger-0-gone", gone_cache), ("banger-0-kept", kept_cache)):
        sibling = another_caches_trees(ram_dir / name / "trees")
        (ram_dir / name / "cache-dir").write_text(str(cache))
        assert sibling.is_dir()
    Store(tmp_path / "cache", volatile=ram_dir / "banger-0-mine")
    assert not (ram_dir / "banger-0-gone").exists()
    assert files_under(ram_dir / "banger-0-kept")  # its cache dir still exists
