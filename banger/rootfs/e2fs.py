"""e2fsprogs helpers shared by the ext4 and ownership steps.

Everything here runs e2fsprogs with a pinned environment (E2FSPROGS_FAKE_TIME, our own
mke2fs.conf, C locale) so the images it produces depend only on their inputs, never on the
clock, the host's mke2fs.conf or the user running it.
"""
from __future__ import annotations

import functools
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from banger.rootfs import debugfs
from banger.rootfs.debugfs import quote  # noqa: F401  (the module's callers use e2fs.quote)
from banger.core.procs import dies_with_parent

# Every timestamp e2fsprogs writes (superblock times, new inodes' a/c/m/crtime) is this instant.
# Must be non-zero: libext2fs treats fs->now == 0 as "use the clock".
EPOCH = 946684800  # 2000-01-01T00:00:00Z
PINS = {"E2FSPROGS_FAKE_TIME": str(EPOCH), "LC_ALL": "C", "TZ": "UTC"}
ROOT_INO = 2
BLOCK = 4096
INODE_SIZE = 256
INODE_RATIO = 16384

# Our own mke2fs.conf: the host's /etc/mke2fs.conf must not change the image (features, and the
# size-based "small"/"floppy" types that would switch to 1 KiB blocks).
MKE2FS_CONF = f"""[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = {BLOCK}
	inode_size = {INODE_SIZE}
	inode_ratio = {INODE_RATIO}
	reserved_ratio = 0

[fs_types]
	ext4 = {{
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}}
"""


class E2fsError(RuntimeError):
    """An e2fsprogs tool failed; the message is one line."""


def env(stage: Path | None = None) -> dict[str, str]:
    """The environment every e2fsprogs run gets (stage: where our mke2fs.conf is written)."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("E2FSPROGS_", "MKE2FS_", "E2FSCK_"))}
    out.update(PINS)
    if stage is not None:
        conf = stage / "mke2fs.conf"
        if not conf.exists():
            conf.write_text(MKE2FS_CONF)
        out["MKE2FS_CONFIG"] = str(conf)
    return out


@functools.cache
def version(tool: str = "mke2fs") -> str:
    """e.g. "mke2fs 1.47.0 (5-Feb-2023)": part of the step key, so an upgrade rebuilds images."""
    try:
        proc = subprocess.run([tool, "-V"], capture_output=True, text=True, preexec_fn=dies_with_parent())
    except FileNotFoundError:
        raise E2fsError(f"{tool} is not installed; install e2fsprogs (apt-get install e2fsprogs)") from None
    first = (proc.stderr or proc.stdout).strip().splitlines()
    return first[0] if first else f"{tool} (unknown version)"


def run(image: Path, commands: list[str], write: bool = False) -> list[debugfs.Block]:
    """debugfs.run with the clock pinned (reproducible images)."""
    try:
        return debugfs.run(image, commands, write=write, env=PINS)
    except debugfs.DebugfsError as exc:
        raise E2fsError(str(exc)) from None


def fsck(image: Path) -> None:
    """`e2fsck -fn`: the verification every image passes before it is stored."""
    proc = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True,
                          errors="surrogateescape", env=env(), preexec_fn=dies_with_parent())
    if proc.returncode != 0:
        problems = [line for line in proc.stdout.splitlines()
                    if line.strip() and not line.startswith(("Pass ", "e2fsck ")) and "files (" not in line]
        detail = (problems or proc.stderr.strip().splitlines() or ["no output"])[0].strip()
        raise E2fsError(f"e2fsck found a problem in the built image ({detail}); nothing was cached")


def superblock(image: Path) -> dict[str, str]:
    """`dumpe2fs -h` as a dict ("Free blocks" -> "123", ...)."""
    proc = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True, env=env(),
                          preexec_fn=dies_with_parent())
    if proc.returncode != 0:
        raise E2fsError(f"dumpe2fs could not read {image}: {proc.stderr.strip().splitlines()[-1:]}")
    fields = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


@dataclass(frozen=True)
class Node:
    ino: int
    mode: int  # full st_mode as stored (type bits + permissions)
    uid: int
    gid: int


LS_LINE = re.compile(r"^/(\d+)/([0-7]+)/(-?\d+)/(-?\d+)/(.*)/(\d*)/$")  # ids print as signed ints


def tree(image: Path, root: str = ".", root_ino: int = ROOT_INO) -> dict[str, Node]:
    """Path -> inode of everything under `root`, read with one `ls -p <ino>` per directory.

    Directories are listed by inode number, a level per debugfs run, so no path is ever looked
    up (debugfs path lookups scan directories linearly). Paths use the fsmeta form ("." for the
    root, "a/b" below it).
    """
    out: dict[str, Node] = {}
    level = [(root, root_ino)]
    while level:
        blocks = run(image, listing_commands(level))
        following = parse_listings(level, blocks, out)
        level = following
    return out


def listing_commands(dirs: list[tuple[str, int]]) -> list[str]:
    return [f"ls -p <{ino}>" for _, ino in dirs]


def parse_listings(dirs: list[tuple[str, int]], blocks: list[debugfs.Block],
                   out: dict[str, Node]) -> list[tuple[str, int]]:
    """Add what `ls -p` printed for `dirs` to `out`; returns the subdirectories found."""
    subdirs = []
    for (dirpath, ino), block in zip(dirs, blocks):
        for line in block.output:
            if not line:
                continue
            m = LS_LINE.match(line)
            if not m:
                raise E2fsError(f"debugfs could not list directory {dirpath!r} (inode {ino}): {line.strip()}")
            child_ino, mode, name = int(m[1]), int(m[2], 8), m[5]
            uid, gid = int(m[3]) & 0xFFFFFFFF, int(m[4]) & 0xFFFFFFFF
            if child_ino == 0 or not name:  # empty slots (lost+found's preallocated blocks)
                continue
            if name in (".", ".."):
                if name == "." and dirpath not in out:
                    out[dirpath] = Node(child_ino, mode, uid, gid)
                continue
            path = name if dirpath == "." else f"{dirpath}/{name}"
            out[path] = Node(child_ino, mode, uid, gid)
            if mode & 0o170000 == 0o040000:
                subdirs.append((path, child_ino))
    return subdirs
