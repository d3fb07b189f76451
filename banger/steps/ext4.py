"""Step "ext4": build a reproducible ext4 image from the flattened tree, without root.

Why not plain `mke2fs -d TREE`: e2fsprogs 1.47.0 copies entries in readdir() order, which on
an ext4 host is hash order under that filesystem's own hash seed (tmpfs, btrfs and xfs differ
again), so the image would depend on where the tree sits. We run mke2fs on an empty image and
fill it with one debugfs batch in sorted order instead (same libext2fs calls as mke2fs -d:
write, mkdir, symlink), every timestamp pinned by E2FSPROGS_FAKE_TIME, UUID and hash seed
derived from the inputs. Result: same inputs -> same bytes, whoever runs it, on any filesystem.

Big directories: libext2fs appends to a linear directory by scanning it, and `write` first
looks the name up (another scan), so n entries cost O(n^2) block reads (50k files: ~155 s).
Directories with more than BIG_DIR entries are made htree first (mkdir + placeholders, then
`e2fsck -fyD` indexes them), and their entries are created in a one-entry scratch directory
and linked in by inode number (`ln .t <dirino>/name`), which inserts through the htree index.

Ownership, modes, mtimes, xattrs and device nodes are applied by the ownership step.
"""
from __future__ import annotations

import os
import stat
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

from banger.core import digest as dg
from banger.core import diskspace
from banger.rootfs import e2fs
from banger.rootfs.e2fs import BLOCK, E2fsError, quote
from banger.engine.tasks import Build, StepRun, step_task
from banger.core.errors import BuildError
from banger.core.procs import dies_with_parent
from banger.engine.spec import BuildSpec

VERSION = "1"
MIN_SIZE = 1 << 30  # content-aware images are never smaller than this (room to install things)
SIZE_STEP = 64 << 20
BIG_DIR = 1024  # entries; bigger directories are built as htree (see the module docstring)
SCRATCH = ".banger-scratch"
PLACEHOLDERS = 256  # enough entries to fill 2 blocks so that e2fsck -D indexes the directory


@dataclass
class Plan:
    """What the tree holds, in the order it is written (sorted, depth first)."""
    dirs: list[str] = field(default_factory=list)  # fsmeta-style paths, "." first
    children: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # dir -> [(name, kind)]
    files: dict[str, int] = field(default_factory=dict)  # path -> size (first link of a group only)
    links: dict[str, str] = field(default_factory=dict)  # later hardlink path -> first path
    symlinks: dict[str, str] = field(default_factory=dict)  # path -> target
    nlink: dict[str, int] = field(default_factory=dict)  # first path -> links in the tree

    @property
    def entries(self) -> int:
        return sum(len(c) for c in self.children.values())


def scan(tree: Path) -> Plan:
    """Walk the tree in sorted order (never readdir order); only dir/reg/sym may be in it."""
    plan = Plan()
    first_of: dict[tuple[int, int], str] = {}

    def walk(rel: str) -> None:
        plan.dirs.append(rel)
        with os.scandir(tree if rel == "." else tree / rel) as it:
            listing = sorted(it, key=lambda e: os.fsencode(e.name))
        kids: list[tuple[str, str]] = []
        subdirs: list[str] = []
        for entry in listing:
            name = entry.name
            quote(name)  # rejects names debugfs cannot take
            path = name if rel == "." else f"{rel}/{name}"
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                kids.append((name, "dir"))
                subdirs.append(path)
            elif stat.S_ISLNK(st.st_mode):
                kids.append((name, "sym"))
                plan.symlinks[path] = os.readlink(entry.path)
            elif stat.S_ISREG(st.st_mode):
                kids.append((name, "reg"))
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in first_of:
                    plan.links[path] = first_of[key]
                    plan.nlink[first_of[key]] += 1
                else:
                    first_of[key] = path
                    plan.files[path] = st.st_size
                    plan.nlink[path] = 1
            else:
                raise BuildError(f"unexpected special file {path!r} in the flattened tree "
                                 "(devices and FIFOs belong in fsmeta); re-run flatten")
        plan.children[rel] = kids
        for sub in subdirs:
            walk(sub)

    if not tree.is_dir():
        raise BuildError(f"flattened tree {tree} is missing; re-run the build")
    walk(".")
    return plan


# ---- sizing ------------------------------------------------------------------------------------
def dirent_len(name: str) -> int:
    return (8 + len(os.fsencode(name)) + 3) & ~3


def content_blocks(plan: Plan) -> int:
    """Blocks the content needs: file data (+ extent blocks), slow symlinks, directories."""
    blocks = 0
    for size in plan.files.values():
        data = -(-size // BLOCK)
        blocks += data + data // 32768  # an extent covers <= 128 MiB; more than 4 need a block
    blocks += sum(1 for t in plan.symlinks.values() if len(os.fsencode(t)) >= 60)
    for kids in plan.children.values():
        used = 24 + sum(dirent_len(name) for name, _ in kids)
        dir_blocks = -(-used // (BLOCK - 12 - 64))  # csum tail; slack for imperfect packing
        blocks += dir_blocks + (dir_blocks // 128 + 1 if len(kids) > BIG_DIR else 0)
    return blocks + PLACEHOLDERS // 100 + 16


def journal_blocks(fs_blocks: int) -> int:
    """ext2fs_default_journal_size() of e2fsprogs 1.47.0."""
    for limit, size in ((32768, 1024), (256 * 1024, 4096), (512 * 1024, 8192), (4096 * 1024, 16384),
                        (8192 * 1024, 32768), (16384 * 1024, 65536), (32768 * 1024, 131072)):
        if fs_blocks < limit:
            return size
    return 262144


def estimate_size(plan: Plan) -> int:
    """Smallest image (bytes) that holds the plan: content + inode tables + journal + metadata."""
    content = content_blocks(plan) * BLOCK
    inodes = plan.entries + 64
    size = content
    for _ in range(4):  # the journal and inode tables depend on the size itself
        inode_table = max(inodes, size // e2fs.INODE_RATIO) * e2fs.INODE_SIZE
        size = content + inode_table + journal_blocks(size // BLOCK) * BLOCK + size // 64 + (8 << 20)
    return size


def choose_size(plan: Plan) -> int:
    need = estimate_size(plan)
    return max(MIN_SIZE, round_up(need + need // 4 + (256 << 20), SIZE_STEP))


def round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def human(n: int) -> str:
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{-(-n // (1 << 20))}M"


# ---- build -------------------------------------------------------------------------------------
def derived_uuid(seed_key: str, purpose: str) -> str:
    return str(uuid.UUID(bytes=sha256(f"banger-ext4-{purpose}:{seed_key}".encode()).digest()[:16], version=4))


def mke2fs(out: Path, size: int, inodes: int | None, seed_key: str, stage: Path) -> None:
    with open(out, "wb") as f:
        f.truncate(size)
    argv = ["mke2fs", "-q", "-F", "-t", "ext4", "-b", str(BLOCK), "-I", str(e2fs.INODE_SIZE), "-m", "0",
            "-U", derived_uuid(seed_key, "uuid"),
            "-E", f"hash_seed={derived_uuid(seed_key, 'hash-seed')},root_owner=0:0",
            *(["-N", str(inodes)] if inodes else []), str(out), str(size // 1024) + "k"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=e2fs.env(stage),
                          preexec_fn=dies_with_parent())
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise BuildError(f"mke2fs failed for a {human(size)} image: {detail}")


def too_small(chosen: int, minimum: int, suggested: int) -> BuildError:
    return BuildError(f"size={human(chosen)} is too small for this image: it needs at least {human(minimum)}; "
                      f"use size={human(suggested)} or leave size= out for a content-aware size")


def host_full(out: Path, size: int, where: Path | None, detail: str = "") -> BuildError | None:
    """The error for a failure that came from the disk holding `out` running full (not from the
    image being too small, which e2fsprogs reports as "Could not allocate ..."), else None."""
    if "No space left on device" not in detail and not diskspace.is_full(out.parent):
        return None
    return BuildError(diskspace.disk_full(where or out.parent,
                                          f"the {human(size)} ext4 image in {where or out.parent}"))


def build_ext4(tree: Path, size: int | None, out: Path, seed_key: str, where: Path | None = None) -> dict:
    """Build `out` from `tree`; `size` in bytes (None = content-aware). Returns facts for the record.
    `where`: the directory a disk-full error names (banger's cache; default: out's directory)."""
    times: dict[str, float] = {}
    t0 = time.monotonic()
    plan = scan(tree)
    if SCRATCH in dict(plan.children["."]):
        raise BuildError(f"the image has a top-level {SCRATCH!r}, a name banger reserves; remove it")
    times["scan"] = time.monotonic() - t0
    need = estimate_size(plan)
    chosen = size if size is not None else choose_size(plan)
    inodes_needed = plan.entries + PLACEHOLDERS + 64
    t = time.monotonic()
    while True:
        inodes = inodes_needed * 5 // 4 if chosen // e2fs.INODE_RATIO < inodes_needed * 5 // 4 else None
        with tempfile.TemporaryDirectory(prefix="mke2fs-", dir=out.parent) as conf_dir:
            try:
                mke2fs(out, chosen, inodes, seed_key, Path(conf_dir))
            except BuildError as exc:
                if full := host_full(out, chosen, where, str(exc)):
                    raise full from None
                if chosen >= need:
                    raise
                raise too_small(chosen, need, round_up(need * 5 // 4, SIZE_STEP)) from None  # not mke2fs's words
        sb = e2fs.superblock(out)
        free_blocks, free_inodes = int(sb["Free blocks"]), int(sb["Free inodes"])
        if free_blocks >= content_blocks(plan) and free_inodes >= inodes_needed:
            break
        overhead = chosen - free_blocks * BLOCK
        minimum = max(need, round_up(overhead + content_blocks(plan) * BLOCK + (8 << 20), 1 << 20))
        suggested = round_up(minimum * 5 // 4, SIZE_STEP)
        if size is None and suggested > chosen:  # our estimate was short: grow, never truncate
            chosen = suggested
            continue
        raise too_small(chosen, minimum, suggested)
    times["mke2fs"] = time.monotonic() - t
    try:
        populate(out, tree, plan, times)
        t = time.monotonic()
        e2fs.fsck(out)
        times["e2fsck"] = time.monotonic() - t
    except E2fsError as exc:
        if full := host_full(out, chosen, where, str(exc)):
            raise full from None
        if "Could not allocate" in str(exc):
            raise too_small(chosen, need, round_up(need * 5 // 4, SIZE_STEP)) from None
        raise BuildError(str(exc)) from None
    return {"size": chosen, "paths": plan.entries + 1, "estimated_need": need,
            "seconds": {k: round(v, 3) for k, v in times.items()}}


def populate(image: Path, tree: Path, plan: Plan, times: dict[str, float]) -> None:
    big = [d for d in plan.dirs if len(plan.children[d]) > BIG_DIR]
    placeholders: dict[str, list[str]] = {}
    for d in big:
        names = {name for name, _ in plan.children[d]}
        placeholders[d] = [f".banger-placeholder-{i:04d}" for i in range(PLACEHOLDERS)]
        if names & set(placeholders[d]):
            raise BuildError(f"directory {d!r} uses names banger reserves (.banger-placeholder-*)")

    # 1. the directory skeleton (and htree seeds for big directories)
    t = time.monotonic()
    skeleton = [f"mkdir {quote('/' + SCRATCH)}"]
    for d in plan.dirs:
        for name, kind in plan.children[d]:
            if kind == "dir" and not (d == "." and name == "lost+found"):
                skeleton.append(f"mkdir {quote(abs_path(d, name))}")
        if d in placeholders:
            skeleton.append(f"cd {quote(abs_path(d))}")
            skeleton += [f"symlink {quote(p)} x" for p in placeholders[d]]
            skeleton.append("cd /")
    e2fs.run(image, skeleton, write=True)
    times["skeleton"] = time.monotonic() - t
    if big:
        t = time.monotonic()
        proc = subprocess.run(["e2fsck", "-fyD", str(image)], capture_output=True, text=True, env=e2fs.env(),
                              preexec_fn=dies_with_parent())
        if proc.returncode not in (0, 1):
            raise E2fsError(f"e2fsck -D could not index directories: {proc.stdout.strip().splitlines()[-1:]}")
        times["index"] = time.monotonic() - t

    # 2. directory inode numbers (read by number, level by level)
    t = time.monotonic()
    nodes = e2fs.tree(image)
    dir_ino = {d: nodes[d].ino for d in plan.dirs}
    scratch = nodes[SCRATCH].ino
    times["map"] = time.monotonic() - t

    # 3. everything else, one batch
    t = time.monotonic()
    cmds: list[str] = []
    for d in plan.dirs:
        ino = dir_ino[d]
        if d in placeholders:
            cmds.append(f"cd <{ino}>")
            cmds += [f"rm {quote(p)}" for p in placeholders[d]]
            cmds.append(f"cd <{scratch}>")
            for name, kind in plan.children[d]:
                if kind == "dir":
                    continue
                cmds += create(tree, d, name, kind, plan, ".t")
                cmds += [f"ln .t {quote(f'<{ino}>/{name}')}", "unlink .t"]
        else:
            cmds.append(f"cd <{ino}>")
            for name, kind in plan.children[d]:
                if kind != "dir":
                    cmds += create(tree, d, name, kind, plan, name)
    for first, count in plan.nlink.items():
        if count > 1:
            cmds.append(f"sif {quote('/' + first)} links_count {count}")
    cmds += ["cd /", f"rmdir {quote(SCRATCH)}"]  # rmdir wants a name relative to the cwd
    if big:  # e2fsck -D stamped "last checked" with the real clock
        cmds.append(f"ssv lastcheck @{e2fs.EPOCH}")
    e2fs.run(image, cmds, write=True)
    times["populate"] = time.monotonic() - t


def create(tree: Path, d: str, name: str, kind: str, plan: Plan, as_name: str) -> list[str]:
    path = name if d == "." else f"{d}/{name}"
    if kind == "sym":
        return [f"symlink {quote(as_name)} {quote(plan.symlinks[path])}"]
    if path in plan.links:
        return [f"ln {quote('/' + plan.links[path])} {quote(as_name)}"]
    return [f"write {quote(str(tree / path))} {quote(as_name)}"]


def abs_path(d: str, name: str | None = None) -> str:
    base = "" if d == "." else "/" + d
    return f"{base}/{name}" if name is not None else (base or "/")


# ---- --check -----------------------------------------------------------------------------------
def seed_of(inputs: dict, params: dict) -> str:
    return dg.key_of({"inputs": inputs, "params": params})


# ---- task --------------------------------------------------------------------------------------
def work(run: StepRun) -> dict[str, str]:
    """Build the ext4 image from the flattened tree"""
    out = run.stage / "rootfs.ext4"
    tree = run.inputs["tree"]
    run.info.update(build_ext4(run.path(tree), run.params["size"], out, seed_of(run.inputs, run.params),
                               where=run.store.root))
    if not run.build.store.tree_intact(tree):  # cheap: only files whose stat() changed are read again
        raise BuildError("the flattened tree changed while the ext4 step read it (something wrote into "
                         "the cache); nothing was cached and the tree was dropped: run the build again")
    return {"image": run.store.ingest_file(out)}


def tasks(build: Build, spec: BuildSpec):
    yield step_task(build, name="ext4", version=VERSION, work=work, deps=("flatten",),
                    inputs=lambda: {"tree": build.output("flatten", "tree"),
                                    "meta": build.output("flatten", "meta")},
                    params={"size": spec.size}, tools=lambda: {"mke2fs": e2fs.version("mke2fs")})
