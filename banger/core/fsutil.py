"""File helpers: atomic writes, private temporary dirs, tree removal, sparse image copies, short
unix socket paths."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Iterator

from banger.core import procs

FICLONE = 0x40049409


def copy_sparse(src: Path, dst: Path) -> str:
    """Copy a (sparse) disk image: reflink where the filesystem can, else copy only data extents
    (holes stay holes). Returns "reflink" or "sparse". Either way, writes to dst never reach src."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
            return "reflink"
        except OSError:
            pass
        size = os.fstat(fin.fileno()).st_size
        offset = 0
        while offset < size:
            try:
                data = os.lseek(fin.fileno(), offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            hole = os.lseek(fin.fileno(), data, os.SEEK_HOLE)
            _copy_range(fin.fileno(), fout.fileno(), data, hole)
            offset = hole
        os.ftruncate(fout.fileno(), size)
    return "sparse"


def _copy_range(fin: int, fout: int, start: int, end: int) -> None:
    """Bytes [start, end) at the same offsets: copy_file_range, or pread/pwrite where the kernel
    refuses it (across filesystems on some kernels, some FUSE or network filesystems)."""
    pos = start
    while pos < end:
        try:
            n = os.copy_file_range(fin, fout, end - pos, pos, pos)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            n = 0
        if n == 0:  # refused (or the source shrank): plain reads and writes for the rest
            while pos < end and (chunk := os.pread(fin, min(end - pos, 1 << 20), pos)):
                pos += os.pwrite(fout, chunk, pos)
            return
        pos += n


def first_difference(a: Path, b: Path, block: int = 4096) -> str | None:
    """None if the files are identical, else where they first differ (block number)."""
    if not (a.is_file() and b.is_file()):
        return None
    if a.stat().st_size != b.stat().st_size:
        return f"sizes differ: {a.stat().st_size} vs {b.stat().st_size} bytes"
    with open(a, "rb") as fa, open(b, "rb") as fb:
        offset = 0
        while x := fa.read(1 << 20):
            y = fb.read(1 << 20)
            if x != y:
                first = next(i for i in range(len(x)) if x[i] != y[i])
                return f"first difference in {block}-byte block {(offset + first) // block}"
            offset += len(x)
    return None


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def temp_dir(parent: Path, prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        remove_tree(path)


def remove_tree(path: Path) -> None:
    """rmtree that also copes with read-only directories an extraction left behind.

    Never follows a symlink (one at `path` itself is removed as a link, its target is left alone)
    and never changes the mode of anything outside `path`: its parent may be a shared directory
    such as /dev/shm."""
    top = os.path.abspath(path)
    try:
        st = os.lstat(top)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(top)
        return

    def inside(p: str) -> bool:
        return p == top or p.startswith(top + os.sep)

    def onerror(func, p, exc_info):
        if isinstance(exc_info[1], FileNotFoundError):
            return
        p = os.path.abspath(p)
        parent = os.path.dirname(p)
        real_dir = os.path.isdir(p) and not os.path.islink(p)
        if func in (os.open, os.scandir, os.listdir) and real_dir and inside(p) and p != top:
            os.chmod(p, 0o700)  # an unreadable directory inside: open it up, then remove it
            shutil.rmtree(p, onerror=onerror)
            return
        if inside(parent) and parent != p:  # a read-only directory of the tree itself
            with contextlib.suppress(OSError):
                os.chmod(parent, 0o700)
        if real_dir and inside(p):
            with contextlib.suppress(OSError):
                os.chmod(p, 0o700)
        with contextlib.suppress(FileNotFoundError):
            func(p)
    shutil.rmtree(top, onerror=onerror)


def remove_dead_staging(parent: Path) -> None:
    """Remove the entries of `parent` whose name carries the owner_tag of a process that is gone
    (a killed build's staging); a live process's, and untagged ones, stay."""
    dead: list[str] = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(parent) as it:
        dead = [e.path for e in it if procs.owner_gone(e.name)]
    for path in dead:
        remove_tree(Path(path))


@contextlib.contextmanager
def socket_path(path: Path) -> Iterator[str]:
    """A path to connect() to the unix socket `path` through, however deep it is: unix socket paths
    are limited to 108 bytes, so this goes through an O_PATH handle on its directory,
    /proc/self/fd/N/NAME. FileNotFoundError when the directory is gone."""
    fd = os.open(Path(path).parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{Path(path).name}"
    finally:
        os.close(fd)
