"""A full disk, told apart from other failures ("the image is too small" from e2fsprogs looks
alike) and reported with where it is: the mount point and what was being written."""
from __future__ import annotations

import errno
import os
from pathlib import Path

FULL = 8 << 20  # a filesystem with less than this free after a failed write is full


def free_bytes(path: Path) -> int:
    """Bytes this process may still write on the filesystem holding `path` (or its nearest
    existing ancestor): root may use the blocks reserved for it, others may not."""
    fs = os.statvfs(_existing(path))
    return (fs.f_bfree if os.geteuid() == 0 else fs.f_bavail) * fs.f_frsize


def is_full(path: Path) -> bool:
    try:
        return free_bytes(path) < FULL
    except OSError:
        return False


def is_enospc(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def mount_point(path: Path) -> Path:
    p = _existing(Path(os.path.abspath(path)))
    dev = p.stat().st_dev
    while p.parent != p and p.parent.stat().st_dev == dev:
        p = p.parent
    return p


def disk_full(path: Path, doing: str, show_free: bool = True) -> str:
    """One line: which filesystem is full, what could not be written, what to do. `show_free`:
    say how much is free (only right while what filled it is still there)."""
    try:
        where = mount_point(path)
        short = f"has {human(free_bytes(path))} free, too little" if show_free else "ran out of space"
    except OSError:
        where, short = Path(path), "ran out of space"
    return (f"the disk is full: {where} {short} for {doing}; free space on it "
            f"(`banger cache gc` frees banger's cache) and run again")


def _existing(path: Path) -> Path:
    p = Path(path)
    while not p.exists() and p.parent != p:
        p = p.parent
    return p


def human(n: int) -> str:
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= factor:
            return f"{n / factor:.1f}{unit}"
    return f"{n} bytes"
