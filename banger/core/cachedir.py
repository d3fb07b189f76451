"""Which directories banger treats as its cache: gc and eviction delete in it, so an ordinary
directory given as --cache-dir must never become one by accident.

A cache holds the marker file MARKER. banger writes it when it makes a cache in a new or empty
directory, and when it finds a cache an earlier banger made (blobs/, actions/ and stamps/, which
every version has made, but no marker), and in $XDG_CACHE_HOME/banger, banger's by its name.
Anything else that is not empty is refused.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from banger.core import config
from banger.core.config import CACHE_ENV

MARKER = ".banger-cache"
LAYOUT = ("blobs", "actions", "stamps")  # what every earlier banger made first in a cache
NOTE = b"This directory is a banger cache: `banger cache gc` deletes in it.\n"


class NotACacheError(Exception):
    """The cache dir is not banger's; the message is one line naming it and the fix."""


def check(root: Path) -> str:
    """"marked", "new" (missing or empty) or "legacy" (made before the marker); raises
    NotACacheError for anything else. Writes nothing."""
    root = Path(root)
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return "new"
    except OSError as exc:
        raise NotACacheError(f"cache dir {root}: {exc.strerror}; point --cache-dir "
                             f"(or {CACHE_ENV}) at a directory of yours") from None
    if not stat.S_ISDIR(st.st_mode):
        raise NotACacheError(f"cache dir {root} is not a directory; point --cache-dir (or {CACHE_ENV}) "
                             "at a new or empty directory")
    if _is(root / MARKER, stat.S_ISREG):
        return "marked"
    entries = os.listdir(root)
    if not entries:
        return "new"
    if MARKER in entries and _is(root / MARKER, stat.S_ISREG):  # made meanwhile by a concurrent banger:
        return "marked"  # open_cache creates the marker before anything else, so a listing sees it
    if all(_is(root / name, stat.S_ISDIR) for name in LAYOUT) or root == config.default_cache():
        return "legacy"
    raise NotACacheError(f"{root} is not a banger cache (it holds other files and no {MARKER}); "
                         f"point --cache-dir (or {CACHE_ENV}) at a new or empty directory")


def open_cache(root: Path) -> None:
    """Make `root` a cache (or adopt one an earlier banger made) unless it is already one."""
    root = Path(root)
    if check(root) == "marked":
        return
    root.mkdir(parents=True, exist_ok=True)
    # created in place, not renamed in: the dir is never seen non-empty without its marker
    fd = os.open(root / MARKER, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(NOTE)


def _is(path: Path, kind) -> bool:
    try:
        return kind(os.lstat(path).st_mode)
    except OSError:
        return False
