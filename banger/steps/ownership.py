"""Step "ownership": apply what the unprivileged flatten could only record in fsmeta.

uid/gid, the full mode (setuid/setgid/sticky), mtimes, xattrs and device nodes / FIFOs /
sockets, written into a sparse copy of the ext4 image by ONE debugfs batch that addresses
every inode by number (`<N>`; debugfs path lookups scan directories linearly). Inode numbers
come from a read-only listing of the image (one `ls -p <ino>` per directory), so every number
the batch uses is an allocated inode: debugfs writes to an unused inode without complaint.
atime, ctime and crtime are set to the mtime, so nothing in an inode depends on the clock.
Afterwards modes/owners of every path and every xattr are read back, and e2fsck -fn must pass.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from banger.rootfs import e2fs
from banger.oci import fsmeta
from banger.core import fsutil
from banger.rootfs.e2fs import E2fsError, Node, quote
from banger.engine.tasks import Build, StepRun, step_task
from banger.core.errors import BuildError
from banger.engine.spec import BuildSpec

VERSION = "1"
TYPE_BITS = {"dir": 0o040000, "reg": 0o100000, "sym": 0o120000, "chr": 0o020000,
             "blk": 0o060000, "fifo": 0o010000, "sock": 0o140000}
SKIPPED_XATTRS = ("trusted.overlay.",)  # overlayfs bookkeeping, meaningless in a plain ext4
SOCKET_TMP = ".banger-socket"
TIME_SAMPLE = 64  # inodes whose times are read back after the batch


def attrs(spec: str, entry: fsmeta.Entry, now: Node | None) -> list[str]:
    """sif commands giving inode `spec` the entry's owner, mode and times (skipping no-ops)."""
    mode = TYPE_BITS[entry.type] | (entry.mode & 0o7777)
    cmds = []
    if now is None or now.uid != entry.uid:
        cmds.append(f"sif {spec} uid {entry.uid}")
    if now is None or now.gid != entry.gid:
        cmds.append(f"sif {spec} gid {entry.gid}")
    if now is None or now.mode != mode:
        cmds.append(f"sif {spec} mode 0{mode:o}")
    if entry.mtime != e2fs.EPOCH:
        cmds += [f"sif {spec} {field} @{entry.mtime}" for field in ("mtime", "atime", "ctime", "crtime")]
    return cmds


def apply_ownership(image: Path, meta_path: Path) -> dict:
    """Apply `meta_path` (fsmeta) to `image` in place. Returns facts for the record."""
    times: dict[str, float] = {}
    t = time.monotonic()
    entries = list(fsmeta.read(meta_path))
    nodes = e2fs.tree(image)
    times["map"] = time.monotonic() - t

    with tempfile.TemporaryDirectory(prefix="xattrs-", dir=image.parent) as values:
        return _apply(image, entries, nodes, Path(values), times)


def _apply(image: Path, entries: list[fsmeta.Entry], nodes: dict[str, Node], values_dir: Path,
           times: dict[str, float]) -> dict:
    cmds: list[str] = []
    xattrs: list[tuple[str, str, bytes]] = []  # (inode spec for read-back, name, value)
    specials = [e for e in entries if e.type in fsmeta.NOT_IN_TREE]
    for entry in entries:
        if entry.type in fsmeta.NOT_IN_TREE:
            continue
        node = nodes.get(entry.path)
        if node is None:
            raise BuildError(f"fsmeta lists {entry.path!r} but the ext4 image has no such path; "
                             "rebuild with `banger build` (the cached tree and fsmeta disagree)")
        if node.mode & 0o170000 != TYPE_BITS[entry.type]:
            raise BuildError(f"{entry.path!r} is a {entry.type} in fsmeta but mode {node.mode:o} in the image; "
                             "rebuild with `banger build`")
        if entry.link:
            target = nodes.get(entry.link)
            if target is None or target.ino != node.ino:
                raise BuildError(f"hardlink {entry.path!r} -> {entry.link!r} does not share an inode in the "
                                 "image; re-run flatten (the tree lost the hardlink)")
            continue  # the entry it links to sets the shared inode
        spec = f"<{node.ino}>"
        cmds += attrs(spec, entry, node)
        cmds += set_xattrs(spec, entry, values_dir, xattrs)

    for entry in specials:
        parent, _, name = entry.path.rpartition("/")
        parent = parent or "."
        pnode = nodes.get(parent)
        if pnode is None or pnode.mode & 0o170000 != TYPE_BITS["dir"]:
            raise BuildError(f"fsmeta has {entry.type} {entry.path!r} but its directory is not in the image")
        if entry.path in nodes:
            raise BuildError(f"fsmeta has {entry.type} {entry.path!r} but the image already has that path")
        cmds.append(f"cd <{pnode.ino}>")
        if entry.type == "sock":  # debugfs mknod knows p/c/b only: make a FIFO, retype, link
            cmds += [f"mknod {SOCKET_TMP} p", f"sif {SOCKET_TMP} mode 0{TYPE_BITS['sock']:o}",
                     f"ln {SOCKET_TMP} {quote(name)}", f"unlink {SOCKET_TMP}"]
        elif entry.type == "fifo":
            cmds.append(f"mknod {quote(name)} p")
        elif entry.major <= 0xFFFF and entry.minor <= 0xFFFF:
            cmds.append(f"mknod {quote(name)} {entry.type[0]} {entry.major} {entry.minor}")
        else:  # debugfs mknod refuses numbers > 65535: write the kernel's new_encode_dev() format
            encoded = (entry.minor & 0xFF) | (entry.major << 8) | ((entry.minor & ~0xFF) << 12)
            cmds += [f"mknod {quote(name)} {entry.type[0]} 0 0", f"sif {quote(name)} block[0] 0",
                     f"sif {quote(name)} block[1] {encoded & 0xFFFFFFFF}"]
        cmds += attrs(quote(name), entry, None)
        cmds += set_xattrs(quote(name), entry, values_dir, xattrs)
    t = time.monotonic()
    try:
        e2fs.run(image, cmds, write=True)
    except E2fsError as exc:
        raise BuildError(str(exc)) from None
    times["apply"] = time.monotonic() - t
    t = time.monotonic()
    verify(image, entries, nodes, xattrs, values_dir)
    times["verify"] = time.monotonic() - t
    t = time.monotonic()
    try:
        e2fs.fsck(image)
    except E2fsError as exc:
        raise BuildError(str(exc)) from None
    times["e2fsck"] = time.monotonic() - t
    return {"entries": len(entries), "commands": len(cmds), "xattrs": len(xattrs), "specials": len(specials),
            "seconds": {k: round(v, 3) for k, v in times.items()}}


def set_xattrs(spec: str, entry: fsmeta.Entry, values_dir: Path,
               xattrs: list[tuple[str, str, bytes]]) -> list[str]:
    cmds = []
    for name, value in sorted(entry.xattrs.items()):
        if name.startswith(SKIPPED_XATTRS):
            continue
        if any(c.isspace() or c == '"' for c in name):
            raise BuildError(f"xattr name {name!r} of {entry.path!r} cannot be passed to debugfs")
        value_file = values_dir / f"{len(xattrs):06d}"
        value_file.write_bytes(value)
        cmds.append(f"ea_set -f {quote(str(value_file))} {spec} {name}")
        xattrs.append((entry.path, name, value))
    return cmds


def verify(image: Path, entries: list[fsmeta.Entry], before: dict[str, Node],
           xattrs: list[tuple[str, str, bytes]], values_dir: Path) -> None:
    """Read back owner and mode of every path, every xattr and a sample of mtimes, in one
    read-only debugfs run (the directories' inode numbers are those of the `before` listing:
    this step creates no directory)."""
    dirs = [(path, node.ino) for path, node in before.items() if node.mode & 0o170000 == 0o040000]
    cmds = e2fs.listing_commands(dirs)
    if xattrs:
        out_dir = values_dir / "read-back"
        out_dir.mkdir(exist_ok=True)
        cmds += [f"ea_get -f {quote(str(out_dir / f'{i:06d}'))} <{before[path].ino}> {name}"
                 for i, (path, name, _) in enumerate(xattrs)]
    timed = [e for e in entries if not e.link and e.path in before]
    sample = timed[:: max(1, len(timed) // TIME_SAMPLE)]
    cmds += [f"stat <{before[e.path].ino}>" for e in sample]
    blocks = e2fs.run(image, cmds)
    nodes: dict[str, Node] = {}
    e2fs.parse_listings(dirs, blocks[:len(dirs)], nodes)
    for entry in entries:
        if entry.link:  # shares the inode checked through the entry it links to
            continue
        node = nodes.get(entry.path)
        want = TYPE_BITS[entry.type] | (entry.mode & 0o7777)
        if node is None or (node.mode, node.uid, node.gid) != (want, entry.uid, entry.gid):
            got = "missing" if node is None else f"mode {node.mode:o} uid {node.uid} gid {node.gid}"
            raise BuildError(f"ownership did not stick on {entry.path!r}: want mode {want:o} uid {entry.uid} "
                             f"gid {entry.gid}, image has {got}")
    for i, (path, name, value) in enumerate(xattrs):
        got_file = values_dir / "read-back" / f"{i:06d}"
        if not got_file.exists() or comparable(name, got_file.read_bytes()) != comparable(name, value):
            raise BuildError(f"xattr {name} of {path!r} did not stick (read back differs)")
    for entry, block in zip(sample, blocks[len(cmds) - len(sample):]):
        mtime = next((line for line in block.output if line.strip().startswith("mtime:")), "")
        got = int(mtime.split()[1].split(":")[0], 16) if mtime else None
        if got != entry.mtime & 0xFFFFFFFF:
            raise BuildError(f"mtime did not stick on {entry.path!r}: want {entry.mtime}, read back {mtime.strip()!r}")


ACL_XATTRS = ("system.posix_acl_access", "system.posix_acl_default")
ACL_NO_ID_TAGS = (0x01, 0x04, 0x10, 0x20)  # USER_OBJ, GROUP_OBJ, MASK, OTHER


def comparable(name: str, value: bytes) -> bytes:
    """ACL entries without an id read back with id 0 instead of -1; compare them without it."""
    if name not in ACL_XATTRS or len(value) < 4 or (len(value) - 4) % 8:
        return value
    out = bytearray(value)
    for off in range(4, len(value), 8):
        if int.from_bytes(value[off:off + 2], "little") in ACL_NO_ID_TAGS:
            out[off + 4:off + 8] = b"\0\0\0\0"
    return bytes(out)


# ---- --check -----------------------------------------------------------------------------------
# ---- task --------------------------------------------------------------------------------------
def work(run: StepRun) -> dict[str, str]:
    """Apply ownership, modes, times, xattrs and device nodes from fsmeta"""
    out = run.stage / "rootfs.ext4"
    fsutil.copy_sparse(run.path(run.inputs["image"]), out)
    out.chmod(0o644)  # the stored blob is read-only; the copy is ours to modify
    run.info.update(apply_ownership(out, run.path(run.inputs["meta"])))
    return {"image": run.store.ingest_file(out)}


def tasks(build: Build, spec: BuildSpec):
    yield step_task(build, name="ownership", version=VERSION, work=work, deps=("ext4",),
                    inputs=lambda: {"image": build.output("ext4", "image"),
                                    "meta": build.output("flatten", "meta")},
                    tools=lambda: {"debugfs": e2fs.version("debugfs")})
