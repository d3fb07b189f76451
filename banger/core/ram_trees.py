"""Flattened trees in RAM (a tmpfs dir, see config.volatile_trees_dir), next to the store.

A tree is an intermediate: only the ext4 step reads it. Extracting ~9k files onto a disk costs
seconds of metadata writes where tmpfs takes a fraction of one, so trees are made here when
there is room, and freed after the build that used them. One that is gone (eviction, reboot)
is remade from its cached layers when a step needs it (engine.Build.materialize); no record
depends on a tree being present.

Layout: <dir>/staging/tree-@<pid>-*  trees being made (swept once that process is gone,
                                     see procs.owner_tag)
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
from banger.core import procs
from banger.core.config import TREES_ENV
from banger.core.fsutil import atomic_write, remove_dead_staging, remove_tree, temp_dir

TREE = "tree+"  # prefix of a directory artifact's digest (re-exported by store)


class RamTrees:
    def __init__(self, root: Path, cache_root: Path):
        self.root = root
        self.trees = root / "trees"
        self._cache_root = cache_root
        self._locks = cache_root / "locks"
        self.refused: str | None = None  # why the RAM dir is not used (one line), if it is not

    def staging(self, expected_bytes: int) -> contextlib.AbstractContextManager[Path] | None:
        """A staging dir for a tree of about `expected_bytes`, or None when RAM has no room for it
        with a quarter of the tmpfs left free (RAM is shared with everything else)."""
        if not self._private():
            return None
        if self.room() < expected_bytes:
            return None
        return temp_dir(self.root / "staging", f"tree-{procs.owner_tag()}-")

    def used(self) -> int:
        """Bytes this cache holds in RAM (trees and staging), links not followed; 0 if the dir is
        not ours alone."""
        if not self.ours():
            return 0
        total = 0
        for top, dirs, files in os.walk(self.root):  # os.walk does not follow links into dirs
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(top, name)).st_blocks * 512
        return total

    def room(self) -> int:
        """Bytes a tree may still take here: what is free, less a quarter of the tmpfs (< 0: none)."""
        fs = os.statvfs(self.root)
        return (fs.f_bavail - fs.f_blocks // 4) * fs.f_frsize

    def _private(self) -> bool:
        """Make the dirs (0700); False if they are not ours alone (or not dirs, or symlinks)."""
        if not self.ours(create=True):
            return False
        try:
            if not os.path.lexists(self.root / "cache-dir"):
                atomic_write(self.root / "cache-dir", str(self._cache_root).encode())
        except OSError:
            return False
        return True

    def ours(self, create: bool = False) -> bool:
        """The RAM dirs exist (made now with `create`) and are this user's alone: real directories,
        not symlinks, mode 0700. Otherwise nothing in them is read, written or deleted, and
        `refused` says why (a missing dir is no problem: there is just nothing in RAM yet)."""
        for d in (self.root, self.root / "staging", self.trees):
            try:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(d, 0o700)
                st = os.lstat(d)
            except FileNotFoundError:
                return False
            except OSError as exc:
                self.refused = f"RAM dir {d} is not usable ({exc.strerror}); trees stay in the cache"
                return False
            problem = ("is a symlink" if stat.S_ISLNK(st.st_mode) else
                       "is not a directory" if not stat.S_ISDIR(st.st_mode) else
                       f"belongs to uid {st.st_uid}, not {os.getuid()}" if st.st_uid != os.getuid() else
                       f"has mode {stat.S_IMODE(st.st_mode):o}, not 700" if st.st_mode & 0o077 else None)
            if problem:
                self.refused = (f"RAM dir {d} {problem}: refusing to use it (trees stay in the cache); "
                                f"remove it, or set {TREES_ENV}=cache")
                return False
        return True

    def evict(self, keep: Iterable[str], remove: Callable[[str], None]) -> list[str]:
        """Free every tree but `keep` (the ones the current build used) with `remove`, staging
        dirs of dead builds, and the RAM dirs of deleted cache dirs; a tree a step is reading
        (see `using`) stays. Nothing happens in dirs that are not ours alone (see `ours`)."""
        if not self.ours():
            return []
        keep = set(keep)
        evicted = []
        for alg in _real_dirs(self.trees):
            for tree in _real_dirs(alg):
                digest = f"{TREE}{alg.name}:{tree.name}"
                if digest in keep:
                    continue
                if remove_unused(self._locks, digest, remove):
                    evicted.append(digest)
        self.sweep_staging()
        self.sweep_orphans()
        return evicted

    def sweep_staging(self) -> None:
        """Remove the staging dirs of processes that are gone (killed builds)."""
        if not self.ours():
            return
        remove_dead_staging(self.root / "staging")
        for stage in (self.root / "staging").glob("tree-*-*"):  # named by an earlier banger: pid only
            with contextlib.suppress(ValueError, OSError):
                if not _alive(int(stage.name.split("-")[1])):
                    remove_tree(stage)

    def sweep_orphans(self) -> None:
        """RAM dirs are named <prefix>-<id of the cache dir>; a sibling whose cache dir was
        deleted would otherwise hold its RAM until the next reboot. Only real directories of
        this user's are looked into (never a symlink, never someone else's)."""
        prefix = self.root.name.rpartition("-")[0]
        if not prefix:
            return
        for sibling in self.root.parent.glob(f"{prefix}-*"):
            with contextlib.suppress(OSError):
                st = os.lstat(sibling)
                if sibling == self.root or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                    continue
                fd = os.open(sibling / "cache-dir", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                with os.fdopen(fd, "rb") as f:
                    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                        continue
                    owner = Path(f.read(4096).decode())
                if not owner.is_dir():
                    remove_tree(sibling)

    def using(self, digests: Iterable[str]) -> contextlib.AbstractContextManager[None]:
        """Shared locks that keep eviction away from trees a step is reading."""
        return using(self._locks, digests)

    def _use_lock(self, digest: str) -> Path:
        return use_lock(self._locks, digest)


def use_lock(locks: Path, digest: str) -> Path:
    """The lock a reader of an artifact holds shared and its remover exclusively (a tree, an
    intermediate disk image)."""
    return locks / f"use-{dg.split(digest.removeprefix(TREE))[1]}.lock"


@contextlib.contextmanager
def using(locks: Path, digests: Iterable[str]) -> Iterator[None]:
    """Shared use locks on `digests` (see use_lock) for the time of the block."""
    with contextlib.ExitStack() as stack:
        for d in sorted(set(digests)):
            f = stack.enter_context(open(use_lock(locks, d), "a"))
            fcntl.flock(f, fcntl.LOCK_SH)
        yield


def remove_unused(locks: Path, digest: str, remove: Callable[[str], None]) -> bool:
    """Remove an artifact with `remove` unless a step holds its use lock; True if removed."""
    with open(use_lock(locks, digest), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        remove(digest)
    return True


def _real_dirs(parent: Path) -> list[Path]:
    """The entries of `parent` that are directories themselves (symlinks are not followed)."""
    try:
        with os.scandir(parent) as it:
            return [Path(e.path) for e in it if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
