"""The ownership step with real debugfs/e2fsck: read every applied fact back from the image."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from banger.core import digest as dg
from banger.rootfs import e2fs
from banger.steps import ext4, ownership
from banger.oci import fsmeta
from banger.core import fsutil
from banger.core.errors import BuildError
from tests.conftest import REPO, need

# security.capability v2 for cap_net_raw (bit 13), permitted + effective
CAP_NET_RAW = bytes.fromhex("01000002" "00200000" "00000000" "00000000" "00000000")
MTIME = 1700000123
E = fsmeta.Entry


def entries() -> list[fsmeta.Entry]:
    return [
        E(".", "dir", 0o755, 0, 0, MTIME),
        E("dev", "dir", 0o755, 0, 0, MTIME),
        E("dev/null", "chr", 0o666, 0, 0, MTIME, major=1, minor=3),
        E("dev/nvme0n1p9", "blk", 0o660, 0, 6, MTIME, major=259, minor=300000),
        E("dev/initctl", "fifo", 0o600, 0, 0, MTIME),
        E("dev/log", "sock", 0o666, 0, 0, MTIME),
        E("etc", "dir", 0o755, 0, 0, MTIME),
        E("etc/shadow", "reg", 0o640, 0, 42, MTIME - 5),
        E("home", "dir", 0o755, 0, 0, MTIME),
        E("home/odd", "dir", 0o2750, 100000, 4294967294, MTIME),
        E("home/odd/file", "reg", 0o600, 100000, 4294967294, 1),
        E("tmp", "dir", 0o1777, 0, 0, MTIME),
        E("usr", "dir", 0o755, 0, 0, MTIME),
        E("usr/bin", "dir", 0o755, 0, 0, MTIME),
        E("usr/bin/passwd", "reg", 0o4755, 0, 0, MTIME),
        E("usr/bin/ping", "reg", 0o755, 0, 0, MTIME,
          xattrs={"security.capability": CAP_NET_RAW, "trusted.overlay.opaque": b"y", "user.note": b"kept"}),
        E("usr/bin/view", "reg", 0o755, 0, 0, MTIME),
        E("usr/bin/vi", "reg", 0o755, 0, 0, MTIME, link="usr/bin/view"),
        E("usr/bin/ex", "reg", 0o755, 0, 0, MTIME, link="usr/bin/view"),
        E("usr/bin/wall", "reg", 0o2755, 0, 5, MTIME),
        E("usr/lib", "sym", 0o777, 1000, 1000, MTIME, target="bin"),
    ]


def make_tree(root: Path) -> None:
    """What an unprivileged flatten leaves: owner-writable modes, no devices, real hardlinks."""
    for e in entries():
        p = root / e.path
        if e.type == "dir":
            p.mkdir(parents=True, exist_ok=True)
            p.chmod(0o755)
        elif e.type == "sym":
            p.symlink_to(e.target)
        elif e.type == "reg" and e.link:
            os.link(root / e.link, p)
        elif e.type == "reg":
            p.write_bytes(f"contents of {e.path}\n".encode())
            p.chmod(0o644)


def build(tmp: Path, tree: Path, meta: Path, name: str = "img") -> Path:
    out = tmp / name / "rootfs.ext4"
    out.parent.mkdir(parents=True)
    ext4.build_ext4(tree, None, out, "seed")
    ownership.apply_ownership(out, meta)
    return out


def stat(image: Path, path: str) -> str:
    return subprocess.run(["debugfs", "-R", f"stat {path}", str(image)], capture_output=True, text=True,
                          check=True).stdout


def field(text: str, pattern: str) -> str:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in {text}"
    return m.group(1)


@pytest.fixture
def built(tmp_path):
    need("mke2fs", "debugfs", "e2fsck", "dumpe2fs")
    tree = tmp_path / "tree"
    make_tree(tree)
    meta = tmp_path / "meta"
    fsmeta.write(meta, entries())
    return tmp_path, tree, meta, build(tmp_path, tree, meta)


def test_owners_modes_and_times(built):
    _, _, _, image = built
    passwd = stat(image, "/usr/bin/passwd")
    assert field(passwd, r"Mode:\s+(\d+)") == "04755"
    assert field(passwd, r"User:\s+(-?\d+)") == "0"
    odd = stat(image, "/home/odd/file")
    assert field(odd, r"User:\s+(-?\d+)") == "100000"
    assert int(field(odd, r"Group:\s+(-?\d+)")) & 0xFFFFFFFF == 4294967294  # debugfs prints it signed
    assert field(odd, r" mtime: (0x[0-9a-f]+)") == "0x00000001"
    assert field(stat(image, "/home/odd"), r"Mode:\s+(\d+)") == "02750"
    assert field(stat(image, "/usr/bin/wall"), r"Mode:\s+(\d+)") == "02755"
    tmp = stat(image, "/tmp")
    assert field(tmp, r"Mode:\s+(\d+)") == "01777"
    shadow = stat(image, "/etc/shadow")
    assert (field(shadow, r"Mode:\s+(\d+)"), field(shadow, r"Group:\s+(-?\d+)")) == ("0640", "42")
    for kind in ("mtime", "atime", "ctime", "crtime"):
        assert int(field(shadow, rf"{kind}: (0x[0-9a-f]+)"), 16) == MTIME - 5
    lib = stat(image, "/usr/lib")
    assert "Type: symlink" in lib and field(lib, r"User:\s+(-?\d+)") == "1000"
    root = stat(image, "<2>")
    assert int(field(root, r" mtime: (0x[0-9a-f]+)"), 16) == MTIME


def test_xattrs_capability_kept_overlay_skipped(built):
    _, _, _, image = built
    listing = subprocess.run(["debugfs", "-R", "ea_list /usr/bin/ping", str(image)], capture_output=True,
                             text=True, check=True).stdout
    assert "security.capability" in listing and "user.note" in listing
    assert "trusted.overlay" not in listing
    got = image.parent / "cap"
    subprocess.run(["debugfs", "-R", f"ea_get -f {got} /usr/bin/ping security.capability", str(image)],
                   capture_output=True, check=True)
    assert got.read_bytes() == CAP_NET_RAW


def test_device_nodes_fifo_socket(built):
    _, _, _, image = built
    null = stat(image, "/dev/null")
    assert "Type: character special" in null and field(null, r"Mode:\s+(\d+)") == "0666"
    assert field(null, r"Device major/minor number: (\d+:\d+)") == "01:03"
    nvme = stat(image, "/dev/nvme0n1p9")
    assert "Type: block special" in nvme and field(nvme, r"Group:\s+(-?\d+)") == "6"
    assert field(nvme, r"Device major/minor number: (\d+:\d+)") == "259:300000"
    assert "Type: FIFO" in stat(image, "/dev/initctl")
    log = stat(image, "/dev/log")
    assert "Type: socket" in log and field(log, r"Mode:\s+(\d+)") == "0666"
    listing = subprocess.run(["debugfs", "-R", "ls -l /dev", str(image)], capture_output=True, text=True).stdout
    assert ".banger-socket" not in listing


def test_hardlinks_share_one_inode_and_fsck_clean(built):
    _, _, _, image = built
    nodes = e2fs.tree(image)
    assert nodes["usr/bin/vi"].ino == nodes["usr/bin/view"].ino == nodes["usr/bin/ex"].ino
    assert field(stat(image, "/usr/bin/vi"), r"Links:\s+(\d+)") == "3"
    proc = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_reapplying_gives_identical_bytes(built):
    tmp, tree, meta, image = built
    again = build(tmp, tree, meta, "again")
    assert dg.of_file(again, "blake3") == dg.of_file(image, "blake3")


def test_meta_and_image_disagreeing_fail_clearly(built):
    tmp, tree, meta, image = built
    copy = tmp / "copy.ext4"
    fsutil.copy_sparse(image, copy)
    bad = tmp / "bad-meta"
    fsmeta.write(bad, entries() + [E("usr/bin/ghost", "reg", 0o755)])
    with pytest.raises(BuildError, match="'usr/bin/ghost' but the ext4 image has no such path"):
        ownership.apply_ownership(copy, bad)
    separate = tmp / "separate"
    shutil.copytree(tree, separate, symlinks=True)  # copytree breaks hardlinks into copies
    out = tmp / "sep" / "rootfs.ext4"
    out.parent.mkdir()
    ext4.build_ext4(separate, None, out, "seed")
    with pytest.raises(BuildError, match="does not share an inode"):
        ownership.apply_ownership(out, meta)


def nobody_python() -> str | None:
    """An interpreter uid 65534 can run (pyenv under /root is not reachable for it)."""
    for candidate in (sys.executable, shutil.which("python3", path=os.defpath)):
        if candidate and subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                         candidate, "-c", "import banger.steps.ext4"], cwd=REPO,
                                        env={**os.environ, "PYTHONPATH": str(REPO)},
                                        capture_output=True).returncode == 0:
            return candidate
    return None


def test_unprivileged_build_gives_the_same_bytes_as_root(tmp_path):
    need("mke2fs", "debugfs", "e2fsck", "dumpe2fs", "setpriv")
    if os.geteuid() != 0:
        pytest.skip("needs root to compare a root build with an unprivileged one")
    python = nobody_python()
    if python is None:
        pytest.skip("no Python interpreter with banger importable is executable by uid 65534")
    shared = Path(tempfile.mkdtemp(prefix="banger-unpriv-"))
    try:
        shared.chmod(0o755)
        tree, meta = shared / "tree", shared / "meta"
        make_tree(tree)
        fsmeta.write(meta, entries())
        meta.chmod(0o644)
        out_dir = shared / "nobody"
        out_dir.mkdir()
        os.chown(out_dir, 65534, 65534)
        script = ("import sys; from pathlib import Path; from banger.steps import ext4, ownership;"
                  "out = Path(sys.argv[3]); ext4.build_ext4(Path(sys.argv[1]), None, out, 'seed');"
                  "ownership.apply_ownership(out, Path(sys.argv[2]))")
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c",
                               script, str(tree), str(meta), str(out_dir / "rootfs.ext4")],
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "HOME": str(out_dir)},
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        as_root = build(tmp_path, tree, meta)
        assert (out_dir / "rootfs.ext4").stat().st_uid == 65534
        assert dg.of_file(out_dir / "rootfs.ext4", "blake3") == dg.of_file(as_root, "blake3")
    finally:
        shutil.rmtree(shared)
