"""The ext4 step with real mke2fs/debugfs/e2fsck: content, hardlinks, big directories, sizing,
reproducibility across tree copies, and the step wiring (record, cache, --check)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from banger.core import digest as dg
from banger.rootfs import e2fs
from banger.steps import ext4
from banger.oci import fsmeta
from banger.engine.tasks import Build
from banger.core.errors import BuildError
from banger.engine.spec import BuildSpec, SpecError, parse_words
from banger.core.store import ActionRecord, Store
from tests.conftest import need

LONG_TARGET = "../" * 30 + "usr/share/some/really/long/target"  # > 60 bytes: a slow symlink


def make_tree(root: Path, order: str = "sorted") -> None:
    """A small root filesystem; `order` = creation order of entries (the image must not care)."""
    files = {
        "etc/hostname": b"banger\n",
        "etc/name with space": b"spaces\n",
        'etc/q"uote': b"quote\n",
        "usr/bin/tool": b"#!/bin/sh\necho hi\n",
        "usr/lib/data.bin": os.urandom(300_000),
        "usr/lib/zeros": b"\0" * 65536 + b"end",
        "var/empty-file": b"",
    }
    items = sorted(files.items()) if order == "sorted" else sorted(files.items(), reverse=True)
    for d in (["var/empty-dir", "usr/lib", "usr/bin", "etc"] if order != "sorted"
              else ["etc", "usr/bin", "usr/lib", "var/empty-dir"]):
        (root / d).mkdir(parents=True, exist_ok=True)
    for path, data in items:
        (root / path).write_bytes(data)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-alias")
    (root / "usr/bin/sh").symlink_to("tool")
    (root / "usr/lib/long").symlink_to(LONG_TARGET)


def image_listing(image: Path) -> dict[str, e2fs.Node]:
    return {p: n for p, n in e2fs.tree(image).items() if p != "lost+found"}


def cat(image: Path, path: str) -> bytes:
    return subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, check=True).stdout


def sha256(path: Path) -> str:
    """Content digest of an image (blake3, streamed: images are 1 GiB sparse files)."""
    return dg.of_file(path, "blake3")[0]


@pytest.fixture(autouse=True)
def tools():
    need("mke2fs", "debugfs", "e2fsck", "dumpe2fs")


def test_image_holds_the_tree_and_fsck_is_clean(tmp_path):
    tree = tmp_path / "tree"
    make_tree(tree)
    out = tmp_path / "out" / "rootfs.ext4"
    out.parent.mkdir()
    info = ext4.build_ext4(tree, None, out, "seed")
    assert out.stat().st_size == info["size"] == ext4.MIN_SIZE
    assert out.stat().st_blocks * 512 < 64 << 20  # sparse: mostly holes
    assert subprocess.run(["e2fsck", "-fn", str(out)], capture_output=True).returncode == 0
    nodes = image_listing(out)
    expected = {".", "etc", "usr", "var", "usr/bin", "usr/lib", "var/empty-dir", "etc/hostname",
                "etc/name with space", 'etc/q"uote', "usr/bin/tool", "usr/bin/tool-alias", "usr/bin/sh",
                "usr/lib/data.bin", "usr/lib/zeros", "usr/lib/long", "var/empty-file"}
    assert set(nodes) == expected
    assert nodes["usr/bin/tool"].ino == nodes["usr/bin/tool-alias"].ino
    assert nodes["usr/bin/sh"].mode & 0o170000 == 0o120000
    assert cat(out, "/usr/lib/data.bin") == (tree / "usr/lib/data.bin").read_bytes()
    assert cat(out, "/usr/lib/zeros") == (tree / "usr/lib/zeros").read_bytes()
    assert cat(out, '"/etc/name with space"') == b"spaces\n"
    stat = subprocess.run(["debugfs", "-R", "stat /usr/bin/tool", str(out)], capture_output=True,
                          text=True, check=True).stdout
    assert "Links: 2" in stat
    assert "mtime: 0x386d4380" in stat and "ctime: 0x386d4380" in stat  # pinned, not copied from the tree
    link = subprocess.run(["debugfs", "-R", "stat /usr/lib/long", str(out)], capture_output=True,
                          text=True, check=True).stdout
    assert LONG_TARGET in link or f"Size: {len(LONG_TARGET)}" in link


def test_same_bytes_from_differently_created_tree_copies(tmp_path):
    """readdir order of the tree (creation order, tmpfs vs ext4) must not reach the image."""
    a = tmp_path / "a"
    make_tree(a, "sorted")
    shm = Path("/dev/shm")  # tmpfs: a different readdir order than the ext4 (or other) tmp_path
    b = Path(tempfile.mkdtemp(dir=shm)) / "b" if shm.is_dir() else tmp_path / "b"
    make_tree(b, "reversed")
    shutil.copyfile(a / "usr/lib/data.bin", b / "usr/lib/data.bin")
    try:
        (tmp_path / "x").mkdir()
        (tmp_path / "y").mkdir()
        ext4.build_ext4(a, None, tmp_path / "x" / "img", "seed")
        ext4.build_ext4(b, None, tmp_path / "y" / "img", "seed")
        assert sha256(tmp_path / "x" / "img") == sha256(tmp_path / "y" / "img")
        (tmp_path / "z").mkdir()
        ext4.build_ext4(a, None, tmp_path / "z" / "img", "other seed")
        assert sha256(tmp_path / "z" / "img") != sha256(tmp_path / "x" / "img")  # UUID follows the seed
    finally:
        if b.is_relative_to(shm):
            shutil.rmtree(b.parent)


def test_big_directory_is_built_as_htree(tmp_path, monkeypatch):
    monkeypatch.setattr(ext4, "BIG_DIR", 20)
    tree = tmp_path / "tree"
    (tree / "many").mkdir(parents=True)
    for i in range(300):
        (tree / "many" / f"f{i:04d}").write_text(str(i))
    (tree / "many" / "sub").mkdir()
    (tree / "many" / "link").symlink_to("f0001")
    os.link(tree / "many" / "f0002", tree / "many" / "hard")
    (tmp_path / "o").mkdir()
    out = tmp_path / "o" / "img"
    ext4.build_ext4(tree, None, out, "seed")
    assert subprocess.run(["e2fsck", "-fn", str(out)], capture_output=True).returncode == 0
    htree = subprocess.run(["debugfs", "-R", "htree /many", str(out)], capture_output=True, text=True).stdout
    assert "Root node dump" in htree
    nodes = image_listing(out)
    assert {p for p in nodes if p.startswith("many/")} == \
        {f"many/f{i:04d}" for i in range(300)} | {"many/sub", "many/link", "many/hard"}
    assert nodes["many/hard"].ino == nodes["many/f0002"].ino
    assert cat(out, "/many/f0299") == b"299"
    assert ".banger-scratch" not in nodes and not any("placeholder" in p for p in nodes)
    time.sleep(1.1)  # a clock that leaked into the image (e2fsck -D stamps "last checked") shows now
    (tmp_path / "o2").mkdir()
    ext4.build_ext4(tree, None, tmp_path / "o2" / "img", "seed")
    assert sha256(tmp_path / "o2" / "img") == sha256(out)


def test_too_small_size_names_the_size_needed(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big").write_bytes(os.urandom(1 << 20) * 24)
    (tmp_path / "o").mkdir()
    with pytest.raises(BuildError, match=r"size=16M is too small for this image: it needs at least \d+M; use size=\d+M"):
        ext4.build_ext4(tree, 16 << 20, tmp_path / "o" / "img", "seed")
    ext4.build_ext4(tree, 64 << 20, tmp_path / "o" / "img", "seed")  # an explicit size that fits is honoured
    assert (tmp_path / "o" / "img").stat().st_size == 64 << 20



@pytest.mark.parametrize("size", [4 << 10, 60 << 10])  # mke2fs itself refuses these ("Not enough space …")
def test_a_size_mke2fs_refuses_gets_the_size_needed_not_mke2fs_words(tmp_path, size):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_bytes(b"x" * 100_000)
    (tmp_path / "o").mkdir()
    with pytest.raises(BuildError) as err:
        ext4.build_ext4(tree, size, tmp_path / "o" / "img", "seed")
    assert re.fullmatch(rf"size={ext4.human(size)} is too small for this image: it needs at least \d+M; use "
                        r"size=\d+M or leave size= out for a content-aware size", str(err.value)), str(err.value)


def test_size_zero_is_refused_when_the_words_are_parsed():
    with pytest.raises(SpecError, match=r"^size='0' is empty; give the disk size, e.g. size=2G, or leave size= out"):
        parse_words(["image=x", "size=0"])


def test_special_file_in_tree_is_refused(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    os.mkfifo(tree / "fifo")
    (tmp_path / "o").mkdir()
    with pytest.raises(BuildError, match="unexpected special file 'fifo'"):
        ext4.build_ext4(tree, None, tmp_path / "o" / "img", "seed")


def test_step_records_caches_and_checks(tmp_path):
    from banger.steps import ownership

    store = Store(tmp_path / "cache")
    tree = tmp_path / "tree"
    make_tree(tree)
    entries = [fsmeta.Entry(".", "dir", 0o755)]
    for dirpath, dirs, files in os.walk(tree):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(tree))
            kind = "sym" if p.is_symlink() else "dir" if p.is_dir() else "reg"
            entries.append(fsmeta.Entry(rel, kind, 0o755 if kind == "dir" else 0o644, 0, 0, 1700000000,
                                        link="usr/bin/tool" if rel == "usr/bin/tool-alias" else ""))
    fsmeta.write(tmp_path / "meta", entries)
    meta = store.ingest_file(tmp_path / "meta")
    tree_digest = store.ingest_tree(tree)
    spec = BuildSpec(image="test")

    def run_steps() -> Build:
        build = Build(store, log=lambda m: None)
        build.records["flatten"] = ActionRecord(key="f", step="flatten", step_version="1", inputs={}, params={},
                                                tools={}, outputs={"tree": tree_digest, "meta": meta})
        list(ext4.tasks(build, spec)), list(ownership.tasks(build, spec))
        for name in ("ext4", "ownership"):
            if not build.is_cached(build.steps[name]):
                build.execute(build.steps[name])
        return build

    first = run_steps()
    assert [r.status for r in first.report] == ["ran", "ran"]
    image = first.output("ownership", "image")
    assert store.path(image).is_file() and image.startswith("blake3:")
    second = run_steps()
    assert [r.status for r in second.report] == ["cached", "cached"]
    assert second.recheck("ext4") == [] and second.recheck("ownership") == []  # what --check runs
