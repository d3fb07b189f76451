"""The root filesystem being flattened: an in-memory model of every path plus its on-disk tree.

The model holds what the disk cannot (owner, full mode, xattrs, device nodes) and which layer
last touched each path, which is what the whiteout rules need. Every disk operation goes
through a directory fd opened with O_NOFOLLOW|O_DIRECTORY from the root down, with one-component
names, so a symlink planted by a layer is never followed, whatever the model says. Files are
always created fresh (O_EXCL), never rewritten in place: a hardlink to a replaced file keeps
the old content.
"""
from __future__ import annotations

import os
import shutil
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from banger.oci import fsmeta

DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
DISK_DIR_MODE = 0o755
FD_CACHE = 64
PAGE = 4096  # a file's data takes whole pages of a tmpfs


@dataclass(slots=True)
class Meta:
    """What belongs to an inode: shared by the paths of a hardlink group."""
    mode: int
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class Node:
    kind: str  # fsmeta type: dir reg sym chr blk fifo
    meta: Meta
    name: str
    parent: "Node | None"
    layer: int  # the layer that created (or re-declared) this path
    touched: int  # the last layer that created anything at or below this path
    children: dict[str, "Node"] | None = None
    target: str = ""
    major: int = 0
    minor: int = 0


def disk_file_mode(mode: int) -> int:
    """Permission bits on disk: the image's rwx bits, owner always rw, never set-id or sticky."""
    return (mode & 0o755) | 0o600


class Tree:
    def __init__(self, root: Path, room: int | None = None):
        os.mkdir(root, DISK_DIR_MODE)
        self.path = root
        self.room = room  # bytes the files' data may take (None: no limit)
        self.used = 0  # data of every file created so far (what was removed since is not taken off)
        self.root = Node("dir", Meta(0o755), "", None, 0, 0, {})
        self._root_fd = os.open(root, DIR_OPEN)
        self._fds: OrderedDict[Node, int] = OrderedDict()
        self.content: dict[int, str] = {}  # inode number -> digest of the data written to it

    def record_content(self, fd: int, blake3_hex: str) -> None:
        """Remember what was written to a new file, so the tree digest need not read it back
        (files are never rewritten in place; a reused inode number gets its new digest here)."""
        self.content[os.fstat(fd).st_ino] = f"blake3:{blake3_hex}"

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        os.close(self._root_fd)

    # ---- directory fds -------------------------------------------------------------------------
    def fd(self, node: Node) -> int:
        """An O_NOFOLLOW fd of the directory `node`, opened one component at a time from the
        nearest ancestor whose fd is cached (the root's always is)."""
        fd = self._fds.get(node)
        if fd is not None:
            self._fds.move_to_end(node)
            return fd
        if node.parent is None:
            return self._root_fd
        missing = []
        while node.parent is not None and node not in self._fds:
            missing.append(node)
            node = node.parent
        fd = self._root_fd if node.parent is None else self._fds[node]
        for node in reversed(missing):
            fd = os.open(node.name, DIR_OPEN, dir_fd=fd)
            self._fds[node] = fd
        while len(self._fds) > FD_CACHE:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def _forget_fds(self, node: Node) -> None:
        """Close cached fds of a removed directory and its subdirectories."""
        if node.kind != "dir" or not self._fds:
            return
        for cached in [n for n in self._fds if n is node or is_below(n, node)]:
            os.close(self._fds.pop(cached))

    # ---- changes (model and disk together) -----------------------------------------------------
    def remove(self, node: Node) -> None:
        parent = node.parent
        assert parent is not None and parent.children is not None
        if node.kind == "dir":
            self._forget_fds(node)
            shutil.rmtree(node.name, dir_fd=self.fd(parent))
        elif node.kind in ("reg", "sym"):
            os.unlink(node.name, dir_fd=self.fd(parent))
        del parent.children[node.name]

    def _attach(self, parent: Node, node: Node) -> Node:
        assert parent.children is not None
        parent.children[node.name] = node
        return node

    def mkdir(self, parent: Node, name: str, meta: Meta, layer: int) -> Node:
        os.mkdir(name, DISK_DIR_MODE, dir_fd=self.fd(parent))
        return self._attach(parent, Node("dir", meta, name, parent, layer, layer, {}))

    def claim(self, size: int) -> bool:
        """Count a new file's `size` bytes against the room before it is written; False if they do not fit."""
        need = -(-size // PAGE) * PAGE
        if self.room is not None and self.used + need > self.room:
            return False
        self.used += need
        return True

    def create_file(self, parent: Node, name: str, meta: Meta, layer: int) -> tuple[Node, int]:
        """A new empty regular file; the caller writes its data to the returned fd and closes it."""
        fd = os.open(name, FILE_CREATE, disk_file_mode(meta.mode), dir_fd=self.fd(parent))
        return self._attach(parent, Node("reg", meta, name, parent, layer, layer)), fd

    def symlink(self, parent: Node, name: str, target: str, meta: Meta, layer: int) -> Node:
        os.symlink(target, name, dir_fd=self.fd(parent))
        return self._attach(parent, Node("sym", meta, name, parent, layer, layer, target=target))

    def special(self, parent: Node, name: str, kind: str, meta: Meta, layer: int,
                major: int = 0, minor: int = 0) -> Node:
        """A device node or FIFO: only in the model (the ownership step creates it in the image)."""
        return self._attach(parent, Node(kind, meta, name, parent, layer, layer, major=major, minor=minor))

    def hardlink(self, parent: Node, name: str, target: Node, layer: int) -> Node:
        assert target.parent is not None
        if target.kind == "reg":
            os.link(target.name, name, src_dir_fd=self.fd(target.parent), dst_dir_fd=self.fd(parent),
                    follow_symlinks=False)
            return self._attach(parent, Node("reg", target.meta, name, parent, layer, layer))
        if target.kind == "sym":  # fsmeta has no symlink hardlink groups: an identical symlink
            return self.symlink(parent, name, target.target, target.meta, layer)
        return self.special(parent, name, target.kind, target.meta, layer, target.major, target.minor)

    # ---- output ----------------------------------------------------------------------------------
    def walk(self) -> Iterator[tuple[str, Node]]:
        stack: list[tuple[str, Node]] = [(".", self.root)]
        while stack:
            path, node = stack.pop()
            yield path, node
            for name, child in (node.children or {}).items():
                stack.append((name if path == "." else f"{path}/{name}", child))

    def entries(self) -> list[fsmeta.Entry]:
        nodes = sorted(self.walk(), key=lambda item: item[0])
        first_path: dict[int, str] = {}  # hardlink groups: id(shared Meta) -> first path
        out = []
        for path, node in nodes:
            m = node.meta
            link = ""
            if node.kind == "reg":
                link = first_path.setdefault(id(m), path)
                link = "" if link == path else link
            out.append(fsmeta.Entry(path=path, type=node.kind, mode=m.mode, uid=m.uid, gid=m.gid,
                                    mtime=m.mtime, xattrs=dict(m.xattrs), major=node.major,
                                    minor=node.minor, target=node.target, link=link))
        return out


def is_below(node: Node, ancestor: Node) -> bool:
    p = node.parent
    while p is not None:
        if p is ancestor:
            return True
        p = p.parent
    return False
