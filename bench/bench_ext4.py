"""Benchmark the ext4 + ownership steps against plain `mkfs.ext4 -d`.

    python3 bench/bench_ext4.py ROOTFS [--work DIR] [--files 50000] [--plain-big]

ROOTFS: an unpacked root filesystem (e.g. a debootstrap). It is copied (special files dropped,
as flatten leaves them) to a tree under --work and described by an fsmeta file, as flatten
would. Cases:
  rootfs      ext4 + ownership from the tree vs `mkfs.ext4 -d` of the same tree
  big-dir     N files in one directory (tree on disk and on tmpfs); --plain-big also times
              `mkfs.ext4 -d` on it (slow: O(n^2), ~171 s for 50k with e2fsprogs 1.47.0)
Numbers go to stdout as one line per measurement.
"""
from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from banger.rootfs import e2fs
from banger.steps import ext4, ownership
from banger.oci import fsmeta  # noqa: E402

SPECIAL = {stat.S_IFCHR: "chr", stat.S_IFBLK: "blk", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "sock"}


def describe(root: Path, tree: Path, meta: Path) -> None:
    """Copy root to tree without special files; write fsmeta for everything (like flatten)."""
    if tree.exists():
        shutil.rmtree(tree)
    subprocess.run(["cp", "-a", "--no-preserve=xattr", str(root), str(tree)], check=True)
    entries = []
    first: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [""] + sorted(dirnames + filenames):
            path = Path(dirpath) / name if name else Path(dirpath)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if name == "" and rel != ".":
                continue
            st = os.lstat(path)
            kind = {stat.S_IFDIR: "dir", stat.S_IFREG: "reg", stat.S_IFLNK: "sym"}.get(stat.S_IFMT(st.st_mode)) \
                or SPECIAL[stat.S_IFMT(st.st_mode)]
            entry = fsmeta.Entry(rel, kind, st.st_mode & 0o7777, st.st_uid, st.st_gid, int(st.st_mtime))
            if kind == "sym":
                entry.target = os.readlink(path)
            if kind in ("chr", "blk"):
                entry.major, entry.minor = os.major(st.st_rdev), os.minor(st.st_rdev)
            if kind == "reg" and st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in first:
                    entry.link = first[key]
                else:
                    first[key] = rel
            try:
                for x in os.listxattr(path, follow_symlinks=False):
                    entry.xattrs[x] = os.getxattr(path, x, follow_symlinks=False)
            except OSError:
                pass
            entries.append(entry)
            if kind in SPECIAL.values():
                (tree / rel).unlink()
    fsmeta.write(meta, entries)


def timed(label: str, fn, *args):
    t = time.monotonic()
    result = fn(*args)
    print(f"{label}: {time.monotonic() - t:.2f} s", flush=True)
    return result


def ext4_and_ownership(tree: Path, meta: Path, out: Path) -> dict:
    info = ext4.build_ext4(tree, None, out, "bench")
    own = ownership.apply_ownership(out, meta)
    return {"ext4": info["seconds"], "ownership": own["seconds"]}


def plain_mkfs(tree: Path, out: Path) -> None:
    out.unlink(missing_ok=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(out), "1G"], check=True,
                   env=e2fs.env())


def big_dir(base: Path, files: int) -> tuple[Path, Path]:
    tree, meta = base / "big-tree", base / "big.fsmeta"
    if tree.exists():
        shutil.rmtree(tree)
    (tree / "many").mkdir(parents=True)
    entries = [fsmeta.Entry(".", "dir", 0o755), fsmeta.Entry("many", "dir", 0o755)]
    for i in range(files):
        name = f"many/file-{i:06d}.txt"
        (tree / name).write_text(f"content {i}\n")
        entries.append(fsmeta.Entry(name, "reg", 0o644, 1000, 1000, 1700000000 + i))
    fsmeta.write(meta, entries)
    return tree, meta


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("rootfs", type=Path)
    ap.add_argument("--work", type=Path, default=None, help="scratch dir on disk (default: a temp dir)")
    ap.add_argument("--files", type=int, default=50000)
    ap.add_argument("--plain-big", action="store_true")
    ap.add_argument("--skip-rootfs", action="store_true")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-ext4-"))
    work.mkdir(parents=True, exist_ok=True)
    shm = Path(tempfile.mkdtemp(prefix="bench-ext4-", dir="/dev/shm")) if Path("/dev/shm").is_dir() else None
    try:
        if not args.skip_rootfs:
            tree, meta = work / "rootfs-tree", work / "rootfs.fsmeta"
            timed("rootfs: describe (copy + fsmeta)", describe, args.rootfs, tree, meta)
            print(f"rootfs: {sum(1 for _ in fsmeta.read(meta))} paths")
            img = work / "rootfs.ext4"
            timed("rootfs: plain mkfs.ext4 -d (1G)", plain_mkfs, tree, work / "plain.ext4")
            for attempt in (1, 2):
                img.unlink(missing_ok=True)
                print("  phases:", timed(f"rootfs: ext4 + ownership (run {attempt})", ext4_and_ownership, tree, meta, img))
            print(f"rootfs: image allocated {img.stat().st_blocks * 512 >> 20} MiB of {img.stat().st_size >> 20} MiB")
            timed("rootfs: plain mkfs.ext4 -d (1G, again)", plain_mkfs, tree, work / "plain.ext4")
        for where, base in (("disk", work), ("tmpfs", shm)):
            if base is None:
                continue
            tree, meta = timed(f"big-dir {args.files} on {where}: create tree", big_dir, base, args.files)
            img = work / f"big-{where}.ext4"
            img.unlink(missing_ok=True)
            print("  phases:", timed(f"big-dir {args.files} on {where}: ext4 + ownership", ext4_and_ownership,
                                     tree, meta, img))
            if args.plain_big and where == "disk":
                timed(f"big-dir {args.files} on {where}: plain mkfs.ext4 -d", plain_mkfs, tree, work / "plain-big.ext4")
            shutil.rmtree(tree)
    finally:
        if shm is not None:
            shutil.rmtree(shm, ignore_errors=True)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
