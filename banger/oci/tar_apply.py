"""Apply one layer (a tar stream) to a Tree with the OCI image-spec changeset rules.

Whiteouts (`.wh.NAME`, `.wh..wh..opq`) hide content of *lower* layers only, whatever their
position in the tar. That is done in one streaming pass: every path this layer creates is
marked with the layer number (and its ancestors as `touched`), and a whiteout removes only what
carries an older mark, so a whiteout or opaque marker that comes after this layer's own entries
leaves them alone, and one that comes before them runs before they exist.

Headers come from tar_headers; file data is copied straight from the layer stream to the file.
"""
from __future__ import annotations

import os

from blake3 import blake3

from banger.core import diskspace
from banger.core.errors import BuildError
from banger.oci.layer_reader import LayerStream
from banger.oci.rootfs_tree import Meta, Node, Tree, is_below
from banger.oci.tar_headers import BLOCK, Member, TarHeaderError, TarHeaders

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
AUFS_META = ".wh..wh."  # aufs bookkeeping (.wh..wh.plnk, ...): ignored, as Docker does
MAX_DEPTH = 256  # far deeper than real images; keeps the recursive removals within Python's stack


class LayerContentError(BuildError):
    """A tar member is malformed or hostile; the message names the member and the layer."""


class NoRoomError(BuildError):
    """The layers unpack to more than the tree may take (a decompression bomb, or RAM too small)."""


def components(name: str, label: str, what: str = "member") -> list[str]:
    if "\0" in name:
        raise LayerContentError(f"{label}: {what} {name!r} contains a NUL byte; the layer is corrupt")
    if name.startswith("/"):
        raise LayerContentError(f"{label}: {what} {name!r} is an absolute path; the layer is corrupt or "
                                "hostile, rebuild the image with relative member names")
    parts = [p for p in name.split("/") if p and p != "."]
    if ".." in parts:
        raise LayerContentError(f"{label}: {what} {name!r} has a '..' component; the layer is corrupt or "
                                "hostile, rebuild the image without such paths")
    if len(parts) > MAX_DEPTH:
        raise LayerContentError(f"{label}: {what} {name[:80]!r}... is nested {len(parts)} levels deep; "
                                f"banger supports up to {MAX_DEPTH}, rebuild the image with a flatter tree")
    return parts


def escapes_root(parts: list[str], target: str) -> bool:
    """A relative symlink at `parts` whose target climbs above the root (lexically)."""
    depth = len(parts) - 1
    for comp in target.split("/"):
        if comp == "..":
            depth -= 1
            if depth < 0:
                return True
        elif comp and comp != ".":
            depth += 1
    return False


class LayerApplier:
    def __init__(self, tree: Tree, layer: int, label: str):
        self.tree = tree
        self.layer = layer
        self.label = label
        self.files = 0
        self.bytes = 0

    # ---- walking the model ---------------------------------------------------------------------
    def _walk(self, parts: list[str], name: str, create: bool) -> Node | None:
        """The directory node at `parts`, creating missing directories when `create` (marking the
        path as touched by this layer). Never passes through a symlink or a non-directory."""
        node = self.tree.root
        if create:
            node.touched = self.layer
        for i, comp in enumerate(parts):
            assert node.children is not None
            child = node.children.get(comp)
            if child is None:
                if not create:
                    return None
                child = self.tree.mkdir(node, comp, Meta(0o755), self.layer)
            elif child.kind != "dir":
                where = "/".join(parts[:i + 1])
                if child.kind == "sym":
                    raise LayerContentError(
                        f"{self.label}: member {name!r} goes through the symlink {where!r} -> {child.target!r}; "
                        "banger never follows symlinks while extracting, rebuild the layer with the real path")
                raise LayerContentError(f"{self.label}: member {name!r}: {where!r} is not a directory; "
                                        "the layer is corrupt, rebuild the image")
            if create:
                child.touched = self.layer
            node = child
        return node

    def _remove_lower(self, node: Node) -> None:
        """Hide what lower layers put at `node`, keeping what this layer added there."""
        if node.touched != self.layer:
            self.tree.remove(node)
        elif node.kind == "dir":
            assert node.children is not None
            for child in list(node.children.values()):
                self._remove_lower(child)

    # ---- members -------------------------------------------------------------------------------
    def apply(self, stream: LayerStream) -> None:
        headers = TarHeaders(stream)
        previous = None
        while True:
            try:
                member = headers.next()
            except TarHeaderError as exc:
                after = f"after member {previous!r} (whose declared size may disagree with its data)" \
                    if previous else "at the start of the layer"
                raise LayerContentError(f"{self.label}: invalid tar header {after}: {exc}; "
                                        "the layer is corrupt, rebuild the image") from None
            if member is None:
                return
            data = member.data_size
            used = self._member(member, stream)
            if used < data and stream.skip(data - used) < data - used:
                self._truncated(member)
            pad = -data % BLOCK
            if pad and stream.skip(pad) < pad:
                self._truncated(member)
            previous = member.name

    def _truncated(self, member: Member) -> None:
        raise LayerContentError(f"{self.label}: member {member.name!r} declares {member.size} bytes but the layer "
                                "ends before them; the layer is truncated or corrupt, re-pull or rebuild it")

    def _member(self, member: Member, stream: LayerStream) -> int:
        """Apply one member; returns how many of its data bytes it consumed."""
        name = member.name
        parts = components(name, self.label)
        base = parts[-1] if parts else ""
        if base.startswith(WHITEOUT):
            self._whiteout(parts, name)
            return 0
        meta = Meta(member.mode, member.uid, member.gid, member.mtime, member.xattrs)
        kind = member.kind
        if not parts:
            if kind != "dir":
                raise LayerContentError(f"{self.label}: member {name!r} is the root but not a directory; "
                                        "the layer is corrupt, rebuild the image")
            self.tree.root.meta = meta
            self.tree.root.layer = self.tree.root.touched = self.layer
            return 0
        parent = self._walk(parts[:-1], name, create=True)
        assert parent is not None and parent.children is not None
        existing = parent.children.get(base)
        if kind == "dir":
            if existing is not None and existing.kind == "dir":
                existing.meta, existing.layer, existing.touched = meta, self.layer, self.layer
                return 0
            self._replace(existing)
            self.tree.mkdir(parent, base, meta, self.layer)
            return 0
        if kind == "link":
            self._hardlink(parent, base, existing, member)
            return 0
        if kind == "sym":
            if not member.linkname.startswith("/") and escapes_root(parts, member.linkname):
                raise LayerContentError(f"{self.label}: symlink {name!r} -> {member.linkname!r} points outside the "
                                        "root filesystem; rebuild the image with a link that stays inside it")
            self._replace(existing)
            meta.mode = 0o777  # what Linux gives every symlink, whatever the tar header says
            self.tree.symlink(parent, base, member.linkname, meta, self.layer)
            return 0
        if kind != "reg":
            self._replace(existing)
            self.tree.special(parent, base, kind, meta, self.layer, member.devmajor, member.devminor)
            return 0
        if not self.tree.claim(member.size):
            self._no_room(member)
        self._replace(existing)
        _, fd = self.tree.create_file(parent, base, meta, self.layer)
        content = blake3()
        try:
            copied = stream.copy_to(fd, member.size, content)
            self.tree.record_content(fd, content.hexdigest())
        finally:
            os.close(fd)
        if copied < member.size:
            self._truncated(member)
        self.files += 1
        self.bytes += member.size
        return member.size

    def _no_room(self, member: Member) -> None:
        room = max(self.tree.room or 0, 0)
        try:
            where = diskspace.mount_point(self.tree.path)
        except OSError:
            where = self.tree.path
        raise NoRoomError(f"{self.label} unpacks to more than the {diskspace.human(room)} free for the flattened tree on "
                          f"{where} (stopped at {member.name!r}, {diskspace.human(member.size)}); if the image really "
                          "is that big, flatten it on disk with BANGER_TREES_DIR=cache")

    def _replace(self, existing: Node | None) -> None:
        if existing is not None:
            self.tree.remove(existing)

    def _whiteout(self, parts: list[str], name: str) -> None:
        base = parts[-1]
        if base == WHITEOUT:
            raise LayerContentError(f"{self.label}: member {name!r} is a whiteout that names nothing; "
                                    "the layer is corrupt, rebuild the image")
        if base.startswith(AUFS_META) and base != OPAQUE:
            return
        parent = self._walk(parts[:-1], name, create=False)
        if parent is None or parent.kind != "dir":
            return  # nothing below to hide
        assert parent.children is not None
        if base == OPAQUE:
            for child in list(parent.children.values()):
                self._remove_lower(child)
            return
        hidden = parent.children.get(base[len(WHITEOUT):])
        if hidden is not None:
            self._remove_lower(hidden)

    def _hardlink(self, parent: Node, base: str, existing: Node | None, member: Member) -> None:
        where = components(member.linkname, self.label, f"hardlink target of {member.name!r}:")
        target = self._lookup(where)
        if target is None or target.kind == "dir":
            raise LayerContentError(
                f"{self.label}: hardlink {member.name!r} -> {member.linkname!r}: the target is "
                f"{'a directory' if target else 'not a file in the layers so far'}; the layer is corrupt, "
                "rebuild the image")
        if target is existing:
            return  # a link to itself: nothing changes
        if existing is not None and existing.kind == "dir" and is_below(target, existing):
            raise LayerContentError(f"{self.label}: hardlink {member.name!r} -> {member.linkname!r} would replace "
                                    "the directory holding its own target; the layer is corrupt")
        self._replace(existing)
        self.tree.hardlink(parent, base, target, self.layer)

    def _lookup(self, parts: list[str]) -> Node | None:
        node: Node | None = self.tree.root
        for comp in parts:
            if node is None or node.kind != "dir":
                return None
            assert node.children is not None
            node = node.children.get(comp)
        return node
