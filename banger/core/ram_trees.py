"""Flattened trees in RAM (a tmpfs dir, see config.volatile_trees_dir), next to the store.

A tree is an intermediate: only the ext4 step reads it. Extracting ~9k files onto a disk costs
seconds of metadata writes where tmpfs takes a fraction of one, so trees are made here when
there is room, and freed after the build that used them. One that is gone (eviction, reboot)
is remade from its cached layers when a step needs it (engine.Build.materialize); no record
depends on a tree being present.

Layout: <dir>/staging/tree-<pid>-*  trees being made (swept once <pid> is gone)
        <dir>/trees/<alg>/<hex>/    finished trees, renamed from staging
        <dir>/cache-dir             the cache dir this belongs to (swept once it is deleted)
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from pathlib import Path
from typing import Callable, Iterable, Iterator

from banger.core import digest as dg
from banger.core.fsutil import atomic_write, remove_tree, temp_dir

TREE = "tree+"  # prefix of a directory artifact's digest (re-exported by store)


class RamTrees:
    def __init__(self, root: Path, cache_root: Path):
        self.root = root
        self.trees = root / "trees"
        self._cache_root = cache_root
        self._locks = cache_root / "locks"

    def staging(self, expected_bytes: int) -> contextlib.AbstractContextManager[Path] | None:
        """A staging dir for a tree of about `expected_bytes`, or None when RAM has no room for it
        with a quarter of the tmpfs left free (RAM is shared with everything else)."""
        if not self._private():
            return None
        if self.room() < expected_bytes:
            return None
        return temp_dir(self.root / "staging", f"tree-{os.getpid()}-")

    def room(self) -> int:
        """Bytes a tree may still take here: what is free, less a quarter of the tmpfs (< 0: none)."""
        fs = os.statvfs(self.root)
        return (fs.f_bavail - fs.f_blocks // 4) * fs.f_frsize

    def _private(self) -> bool:
        """Make the dirs (0700); False if they are not ours alone (or not dirs, or symlinks)."""
        try:
            for d in (self.root, self.root / "staging", self.trees):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(d, 0o700)
                st = os.lstat(d)
                if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
                    return False
            if not (self.root / "cache-dir").exists():
                atomic_write(self.root / "cache-dir", str(self._cache_root).encode())
        except OSError:
            return False
        return True

    def evict(self, keep: Iterable[str], remove: Callable[[str], None]) -> list[str]:
        """Free every tree but `keep` (the ones the current build used) with `remove`, staging
        dirs of dead builds, and the RAM dirs of deleted cache dirs; a tree a step is reading
        (see `using`) stays."""
        if not self.trees.is_dir():
            return []
        keep = set(keep)
        evicted = []
        for alg in self.trees.iterdir():
            for tree in alg.iterdir():
                digest = f"{TREE}{alg.name}:{tree.name}"
                if digest in keep:
                    continue
                with open(self._use_lock(digest), "a") as f:
                    try:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue
                    remove(digest)
                evicted.append(digest)
        for stage in (self.root / "staging").glob("tree-*-*"):
            with contextlib.suppress(ValueError, OSError):
                if not _alive(int(stage.name.split("-")[1])):
                    remove_tree(stage)
        self._sweep_orphans()
        return evicted

    def _sweep_orphans(self) -> None:
        """RAM dirs are named <prefix>-<id of the cache dir>; a sibling whose cache dir was
        deleted would otherwise hold its RAM until the next reboot."""
        prefix = self.root.name.rpartition("-")[0]
        if not prefix:
            return
        for sibling in self.root.parent.glob(f"{prefix}-*"):
            owner = sibling / "cache-dir"
            with contextlib.suppress(OSError):
                if sibling.lstat().st_uid == os.getuid() and owner.is_file() \
                        and not Path(owner.read_text()).is_dir():
                    remove_tree(sibling)

    @contextlib.contextmanager
    def using(self, digests: Iterable[str]) -> Iterator[None]:
        """Shared locks that keep eviction away from trees a step is reading."""
        with contextlib.ExitStack() as stack:
            for d in sorted(set(digests)):
                f = stack.enter_context(open(self._use_lock(d), "a"))
                fcntl.flock(f, fcntl.LOCK_SH)
            yield

    def _use_lock(self, digest: str) -> Path:
        return self._locks / f"use-{dg.split(digest.removeprefix(TREE))[1]}.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
