"""The demo/test image: deterministic layer tars, the real Debian OCI layout, push, demo registry."""
from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from banger.devtools import debian_image as devimage, debootstrap, layer_tar, registry as devregistry, oci_writer
from tests.conftest import need
from tests.support_images import DEBIAN_TAG

EPOCH = 1_600_000_000
# struct vfs_cap_data, revision 2: effective flag set, permitted = cap_net_raw (13)
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="file capabilities and device nodes need root")


def make_tree(root: Path) -> None:
    """A small tree with everything an unprivileged copy loses, created in a scrambled order."""
    (root / "usr/bin").mkdir(parents=True)
    (root / "dev").mkdir()
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)
    (root / "srv/shared").mkdir(parents=True)
    os.chmod(root / "srv/shared", 0o2775)
    os.chown(root / "srv/shared", 0, 50)
    passwd = root / "usr/bin/passwd"
    passwd.write_bytes(b"\x7fELF pretend passwd\n" * 100)
    os.chmod(passwd, 0o4755)
    ping = root / "usr/bin/ping"
    ping.write_bytes(b"pretend ping\n")
    os.setxattr(ping, "security.capability", CAP_NET_RAW)
    os.setxattr(ping, "user.note", b"\xff\x00binary")
    (root / "usr/bin/gzip").write_bytes(b"gzip\n" * 10)
    os.link(root / "usr/bin/gzip", root / "usr/bin/gunzip")
    os.link(root / "usr/bin/gzip", root / "usr/bin/uncompress")
    owned = root / "srv/owned"
    owned.write_text("data\n")
    os.chown(owned, 1234, 5678)
    os.mknod(root / "dev/ttyS0", 0o620 | stat.S_IFCHR, os.makedev(4, 64))
    os.mknod(root / "dev/vda1", 0o660 | stat.S_IFBLK, os.makedev(254, 1))
    os.mkfifo(root / "dev/initctl", 0o600)
    os.chmod(root / "dev/ttyS0", 0o620)  # mknod applies the umask
    os.chmod(root / "dev/vda1", 0o660)
    os.symlink("/usr/bin/gzip", root / "usr/bin/zcat")
    os.symlink("../usr/bin", root / "srv/bin")
    long_dir = root / ("d" * 90) / ("e" * 60)
    long_dir.mkdir(parents=True)
    (long_dir / "long-name-file").write_text("long\n")
    os.utime(owned, (EPOCH - 1000, EPOCH - 1000))  # older than the epoch: kept
    os.utime(passwd, (EPOCH + 5000, EPOCH + 5000))  # newer: clamped


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    make_tree(root)
    return root


@needs_root
def test_tar_keeps_metadata_an_unprivileged_copy_loses(tree, tmp_path):
    out = tmp_path / "layer.tar"
    stats = layer_tar.rootfs_to_layer_tar(tree, out, EPOCH)
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar}
    assert members["usr/bin/passwd"].mode == 0o4755 and members["usr/bin/passwd"].isreg()
    assert members["tmp"].mode == 0o1777 and members["srv/shared"].mode == 0o2775
    assert (members["srv/shared"].uid, members["srv/shared"].gid) == (0, 50)
    assert (members["srv/owned"].uid, members["srv/owned"].gid) == (1234, 5678)
    assert members["srv/owned"].uname == "" and members["srv/owned"].gname == ""
    ping = members["usr/bin/ping"].pax_headers
    assert ping["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape") == CAP_NET_RAW
    assert ping["SCHILY.xattr.user.note"].encode("utf-8", "surrogateescape") == b"\xff\x00binary"
    tty = members["dev/ttyS0"]
    assert tty.ischr() and (tty.devmajor, tty.devminor, tty.mode) == (4, 64, 0o620)
    vda = members["dev/vda1"]
    assert vda.isblk() and (vda.devmajor, vda.devminor) == (254, 1)
    assert members["dev/initctl"].isfifo()
    links = sorted(n for n in ("usr/bin/gzip", "usr/bin/gunzip", "usr/bin/uncompress"))
    assert members[links[0]].isreg()  # first in tar order carries the data
    assert all(members[n].islnk() and members[n].linkname == links[0] for n in links[1:])
    assert members["usr/bin/zcat"].linkname == "/usr/bin/gzip"
    assert members["srv/bin"].linkname == "../usr/bin"
    assert members["srv/owned"].mtime == EPOCH - 1000
    assert members["usr/bin/passwd"].mtime == EPOCH
    assert stats.hardlinks == 2 and stats.devices == 2
    for m in members.values():
        assert not {"atime", "ctime", "uname", "gname", "hdrcharset"} & set(m.pax_headers)
    names = list(members)
    assert names.index("usr") < names.index("usr/bin") < names.index("usr/bin/passwd")


@needs_root
def test_tar_is_deterministic_whatever_the_inode_and_creation_order(tree, tmp_path):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(tree), str(copy)], check=True)
    layer_tar.rootfs_to_layer_tar(tree, tmp_path / "a.tar", EPOCH)
    layer_tar.rootfs_to_layer_tar(copy, tmp_path / "b.tar", EPOCH)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert not list(tmp_path.glob("*.part"))


@needs_root
def test_umoci_unpacks_the_crafted_layer_with_everything_intact(tree, tmp_path):
    need("umoci")
    tar = tmp_path / "layer.tar"
    layer_tar.rootfs_to_layer_tar(tree, tar, EPOCH)
    layout = tmp_path / "oci"
    oci_writer.write_index(layout, "t", [oci_writer.write_image(layout, [oci_writer.Layer(tar, "gzip")])])
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:t", str(bundle)], check=True, capture_output=True)
    rootfs = bundle / "rootfs"
    st = os.lstat(rootfs / "usr/bin/passwd")
    assert stat.S_IMODE(st.st_mode) == 0o4755 and st.st_uid == 0
    assert os.getxattr(rootfs / "usr/bin/ping", "security.capability") == CAP_NET_RAW
    tty = os.lstat(rootfs / "dev/ttyS0")
    assert stat.S_ISCHR(tty.st_mode) and (os.major(tty.st_rdev), os.minor(tty.st_rdev)) == (4, 64)
    assert stat.S_ISBLK(os.lstat(rootfs / "dev/vda1").st_mode)
    assert stat.S_ISFIFO(os.lstat(rootfs / "dev/initctl").st_mode)
    inodes = {os.lstat(rootfs / "usr/bin" / n).st_ino for n in ("gzip", "gunzip", "uncompress")}
    assert len(inodes) == 1
    owned = os.lstat(rootfs / "srv/owned")
    assert (owned.st_uid, owned.st_gid) == (1234, 5678)
    assert os.readlink(rootfs / "usr/bin/zcat") == "/usr/bin/gzip"
    assert (rootfs / ("d" * 90) / ("e" * 60) / "long-name-file").read_text() == "long\n"


def test_tidy_rootfs_removes_host_leftovers_and_docs(tmp_path):
    root = tmp_path / "rootfs"
    for d in ("etc/ssh", "usr/share/doc/bash/examples", "usr/share/man/man1", "usr/share/locale/de/LC_MESSAGES",
              "var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "var/log/apt", "tmp"):
        (root / d).mkdir(parents=True)
    files = {"etc/resolv.conf": "nameserver 10.0.0.1\n", "etc/machine-id": "c726990dd090402ca8e9193b67452554\n",
             "usr/share/doc/bash/copyright": "GPL\n", "usr/share/doc/bash/README": "readme\n",
             "usr/share/doc/bash/examples/x": "x\n", "usr/share/man/man1/bash.1.gz": "man\n",
             "usr/share/locale/locale.alias": "alias\n", "usr/share/locale/de/LC_MESSAGES/bash.mo": "mo\n",
             "var/lib/apt/lists/x_Packages": "p\n", "var/cache/apt/pkgcache.bin": "b\n",
             "var/cache/apt/archives/bash.deb": "deb\n", "var/log/dpkg.log": "log\n", "tmp/junk": "j\n",
             "etc/ssh/ssh_host_ed25519_key": "secret\n", "etc/ssh/ssh_host_ed25519_key.pub": "pub\n",
             "etc/ssh/sshd_config": "# config\n"}
    for rel, text in files.items():
        (root / rel).write_text(text)
    (root / "usr/share/doc/nodoc").mkdir()
    debootstrap.tidy_rootfs(root)
    assert (root / "etc/hostname").read_text() == "debian\n"
    assert "127.0.1.1\tdebian" in (root / "etc/hosts").read_text()
    assert not (root / "etc/resolv.conf").exists()
    assert (root / "etc/machine-id").read_text() == ""
    assert [p.name for p in (root / "etc/ssh").iterdir()] == ["sshd_config"]
    assert (root / "usr/share/doc/bash/copyright").exists()
    assert sorted(p.name for p in (root / "usr/share/doc").rglob("*")) == ["bash", "copyright"]
    assert [p.name for p in (root / "usr/share/locale").iterdir()] == ["locale.alias"]
    assert not list((root / "usr/share/man").iterdir())
    assert [p.name for p in (root / "var/lib/apt/lists").iterdir()] == ["partial"]
    assert [p.name for p in (root / "var/cache/apt").rglob("*")] == ["archives", "partial"]
    assert not (root / "var/log/dpkg.log").exists() and not list((root / "tmp").iterdir())
    assert "path-exclude /usr/share/doc/*" in (root / "etc/dpkg/dpkg.cfg.d/excludes").read_text()


def test_outdated_recipe_tars_are_dropped(tmp_path):
    for name, recipe in (("debian-bookworm-old", "0"), ("debian-bookworm-new", devimage.RECIPE_VERSION)):
        (tmp_path / f"{name}.tar").write_bytes(b"tar")
        (tmp_path / f"{name}.json").write_text(json.dumps({"recipe": recipe}))
    devimage._drop_outdated_recipes(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["debian-bookworm-new.json", "debian-bookworm-new.tar"]


def test_mirror_comes_from_the_host_apt_configuration():
    need("apt-get")
    uri = debootstrap.mirror_uri("bookworm")
    listed = subprocess.run(["apt-get", "indextargets", "--format", "$(REPO_URI)"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert uri in listed and "security" not in uri


def test_debootstrap_as_non_root_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(debootstrap.DevImageError, match="needs root") as err:
        debootstrap.debootstrap_rootfs(tmp_path / "rootfs")
    assert "\n" not in str(err.value) and not (tmp_path / "rootfs").exists()


def test_push_to_an_unreachable_registry_is_one_line(tmp_path):
    need("skopeo")
    tar = tmp_path / "layer.tar"
    (tmp_path / "small").mkdir()
    (tmp_path / "small/f").write_text("x")
    layer_tar.rootfs_to_layer_tar(tmp_path / "small", tar, EPOCH)
    layout = tmp_path / "oci"
    oci_writer.write_index(layout, "t", [oci_writer.write_image(layout, [oci_writer.Layer(tar, "none")])])
    with pytest.raises(debootstrap.DevImageError) as err:
        devimage.push(layout, "t", f"127.0.0.1:{devregistry.free_port()}", "x")
    assert "failed" in str(err.value) and "\n" not in str(err.value)


# ---- the real Debian image (built once, cached in the fixture cache) ---------------------------------
def test_debian_layout_is_valid_and_complete(debian_layout, tmp_path):
    need("umoci", "skopeo")
    info = json.loads(subprocess.run(["skopeo", "inspect", f"oci:{debian_layout}:{DEBIAN_TAG}"],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["Os"] == "linux" and len(info["Layers"]) == 1
    layer = debian_layout / "blobs" / info["Layers"][0].replace(":", "/")
    wanted = {"usr/bin/passwd", "usr/bin/ping", "dev/null"}
    with tarfile.open(layer, "r|gz") as tar:  # streamed, as a registry client reads it
        found = {m.name: m for m in tar if m.name in wanted}
    assert found["usr/bin/passwd"].mode == 0o4755 and found["usr/bin/passwd"].uid == 0
    assert "SCHILY.xattr.security.capability" in found["usr/bin/ping"].pax_headers
    assert found["dev/null"].ischr() and (found["dev/null"].devmajor, found["dev/null"].devminor) == (1, 3)
    if os.geteuid() != 0:
        pytest.skip("umoci unpack with real ownership needs root")
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{debian_layout}:{DEBIAN_TAG}", str(bundle)],
                   check=True, capture_output=True)
    rootfs = bundle / "rootfs"
    passwd = os.lstat(rootfs / "usr/bin/passwd")
    assert stat.S_IMODE(passwd.st_mode) == 0o4755 and passwd.st_uid == 0
    cap = os.getxattr(rootfs / "usr/bin/ping", "security.capability")
    assert struct.unpack("<I", cap[4:8])[0] & (1 << 13)  # cap_net_raw permitted
    null = os.lstat(rootfs / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    assert os.readlink(rootfs / "sbin") == "usr/sbin"  # merged /usr
    # Absolute symlinks resolve inside the guest, so they are read, not followed, here.
    assert os.readlink(rootfs / "usr/sbin/init") == "/lib/systemd/systemd"
    assert os.readlink(rootfs / "usr/lib/systemd/systemd-udevd") == "/bin/udevadm"
    for path in ("usr/lib/systemd/systemd", "usr/bin/udevadm", "usr/sbin/sshd", "usr/bin/ip",
                 "etc/ssl/certs/ca-certificates.crt", "usr/lib/systemd/system/ssh.service"):
        assert (rootfs / path).is_file(), path
    assert (rootfs / "etc/machine-id").read_text() == ""
    assert (rootfs / "etc/hostname").read_text() == "debian\n"
    assert not (rootfs / "etc/resolv.conf").exists()
    assert not list((rootfs / "etc/ssh").glob("ssh_host_*")) and (rootfs / "etc/ssh/sshd_config").exists()
    assert not list((rootfs / "var/lib/apt/lists").glob("*Packages*"))
    assert not (rootfs / "boot/vmlinuz").exists() and not list((rootfs / "usr/lib/modules").glob("*"))


def test_debian_layout_is_reused_not_rebuilt(debian_layout, fixture_cache):
    index = debian_layout / "index.json"
    before = index.stat().st_mtime_ns
    desc = devimage.build_debian_layout(debian_layout, DEBIAN_TAG, fixture_cache / "debian-src",
                                        log=lambda msg: pytest.fail(f"rebuilt: {msg}"))
    assert index.stat().st_mtime_ns == before
    assert desc["digest"] == json.loads((debian_layout / "banger-devimage.json").read_text())["manifest"]


def test_pushed_debian_image_can_be_inspected(debian_image_ref, debian_layout):
    info = json.loads(subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{debian_image_ref}"],
                                     capture_output=True, text=True, check=True).stdout)
    stamp = json.loads((debian_layout / "banger-devimage.json").read_text())
    assert info["Digest"] == stamp["manifest"]
    assert info["Architecture"] and len(info["Layers"]) == 1


def test_demo_registry_keeps_the_image_and_port_between_runs(debian_layout, fixture_cache, tmp_path):
    need("docker-registry", "skopeo")
    # The demo cache layout matches the fixture's (debian-oci + debian-src), so no debootstrap here.
    demo_cache = tmp_path / "demo"
    demo_cache.mkdir()
    (demo_cache / "debian-oci").symlink_to(debian_layout)
    (demo_cache / "debian-src").symlink_to(fixture_cache / "debian-src")
    lines: list[str] = []
    registry, ref = devimage.ensure_demo_image(demo_cache, log=lines.append)
    try:
        assert ref == f"{registry.host}/debian:bookworm"
        assert any(line.startswith("pushing") for line in lines)
        subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"], check=True,
                       capture_output=True)
    finally:
        registry.stop()
    lines.clear()
    registry2, ref2 = devimage.ensure_demo_image(demo_cache, log=lines.append)
    try:
        assert ref2 == ref  # the port is kept when it is still free
        assert not any(line.startswith("pushing") for line in lines), lines
        assert any(line.startswith("image ready") for line in lines)
    finally:
        registry2.stop()


@needs_root
def test_unmount_under_releases_mounts_a_failed_debootstrap_leaves(tmp_path):
    need("mount", "umount")
    (tmp_path / "src").mkdir()
    (tmp_path / "src/keep").write_text("host data\n")
    target = tmp_path / "rootfs/with space/proc"
    target.mkdir(parents=True)
    if subprocess.run(["mount", "--bind", str(tmp_path / "src"), str(target)], capture_output=True).returncode:
        pytest.skip("bind mounts are not permitted here")
    debootstrap.unmount_under(tmp_path / "rootfs")
    assert str(target).replace(" ", "\\040") not in Path("/proc/self/mountinfo").read_text()
    assert not (target / "keep").exists() and (tmp_path / "src/keep").exists()
