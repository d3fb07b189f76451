"""The disk holding the cache runs full while the ext4 image is written: that is reported as a
full disk (where, and what to do), not as "size= is too small". Real ENOSPC, from a small tmpfs
mounted in the test's temporary dir (the tests run as root)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from banger.core import config
from banger.core.errors import BuildError
from banger.kernel import sources
from banger.steps import ext4
from tests.support_kernel import make_kernel_tree
from tests.support_registry import make_image
from tests.support_tools import REPO, need, small_tmpfs


@pytest.mark.parametrize("size", [64 << 20, None])  # populate (debugfs) runs out; mke2fs itself does
def test_a_full_disk_is_not_a_too_small_image(tmp_path, size):
    need("mkfs.ext4", "debugfs")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big").write_bytes(os.urandom(40 << 20))  # fits a 64M image, not the 24M disk
    with small_tmpfs(tmp_path / "disk", "24m") as disk:
        cache = disk / "cache"
        (cache / "staging" / "s").mkdir(parents=True)
        with pytest.raises(BuildError) as exc:
            ext4.build_ext4(tree, size, cache / "staging" / "s" / "rootfs.ext4", "seed", where=cache)
        msg = str(exc.value)
        assert "too small" not in msg and "\n" not in msg
        assert re.fullmatch(rf"the disk is full: {re.escape(str(disk))} has [0-9.]+[KM]?(?: bytes)? free, too little "
                            rf"for the \d+[MG] ext4 image in {re.escape(str(cache))}; free space on it "
                            r"\(`banger cache gc` frees banger's cache\) and run again", msg), msg


def test_a_full_cache_disk_through_the_cli_says_so_and_caches_nothing(tmp_path):
    need("mkfs.ext4", "debugfs")
    layout = tmp_path / "layout"
    make_image(layout, "v1", {"etc/os-release": b"ID=small\n", "big": os.urandom(20 << 20)})
    # the tree goes to a tmpfs of its own with room for it (a quarter of it stays free), so that the
    # full disk is met by the ext4 step whatever the host's disks hold (a tree that finds no room
    # there is staged in the cache, and flatten would hit the full disk first)
    with small_tmpfs(tmp_path / "disk", "40m") as disk, small_tmpfs(tmp_path / "trees", "200m") as trees:
        dirs = config.Dirs(cache=disk / "cache", state=tmp_path / "state" / "banger",
                           config=tmp_path / "config" / "banger")
        sources.import_dir(dirs, "k", make_kernel_tree(tmp_path / "kernel-src", "6.1.0-99-amd64"))
        env = {**os.environ, "BANGER_CACHE_DIR": str(dirs.cache), "XDG_STATE_HOME": str(tmp_path / "state"),
               "XDG_CONFIG_HOME": str(tmp_path / "config"), "BANGER_TREES_DIR": str(trees / "ram")}
        for _ in range(2):  # the second time, ext4 runs again: the failure was not cached
            proc = subprocess.run([sys.executable, "-m", "banger", "build", f"image=oci-layout:{layout}:v1",
                                   "size=1G", "kernel=k", "boot=no"], cwd=REPO, capture_output=True,
                                  text=True, env=env, timeout=300)
            out = proc.stdout + proc.stderr
            assert proc.returncode != 0 and "running ext4" in out, out
            errors = [line for line in out.splitlines() if line.startswith("error:")]
            assert len(errors) == 1, out
            assert errors[0].startswith(f"error: the disk is full: {disk} has "), out
            assert f"too little for the 1G ext4 image in {dirs.cache};" in errors[0], out
            assert "too small" not in out and "Traceback" not in out
        assert not list((dirs.cache / "staging").iterdir())
