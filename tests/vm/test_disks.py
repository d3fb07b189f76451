"""A VM's disk: sizes as people write them, a real qcow2 overlay whose writes never reach the
cached image (checked with qemu-img and qemu-io), and Firecracker's sparse raw copy."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

from banger.vm import disks
from banger.vm.records import VMStateError
from tests.support_tools import need

MiB = 2**20


@pytest.mark.parametrize("text, size", [
    ("2G", 2 * 2**30), ("2g", 2 * 2**30), ("512M", 512 * MiB), ("1024K", MiB), ("4096", 4096),
    ("1T", 2**40), ("2GiB", 2 * 2**30), ("2GB", 2 * 2**30), ("512 M", 512 * MiB), (" 8G ", 8 * 2**30),
    ("100B", 100), (3, 3),
])
def test_parse_size(text, size):
    assert disks.parse_size(text, "--memory", "--memory 2G") == size


@pytest.mark.parametrize("text", ["0", "0G", "abc", "", "1.5G", "-1G", "2P", "G", "2 G B", "2Gi", "1e9", "2G\nx"])
def test_parse_size_errors_are_one_line_with_an_example(text):
    with pytest.raises(VMStateError) as err:
        disks.parse_size(text, "--disk-size", "--disk-size 8G")
    message = str(err.value)
    assert message.startswith(f"--disk-size {text!r} is not a size") and message.endswith("use e.g. --disk-size 8G")
    assert "\n" not in message


def test_disk_names():
    assert disks.disk_name("qemu") == "disk.qcow2" and disks.disk_name("firecracker") == "disk.raw"


@pytest.fixture
def base(tmp_path):
    """A 4 MiB raw image: a 64 KiB pattern at the start, a hole, another pattern at 3 MiB."""
    path = tmp_path / "cache" / "rootfs.raw"
    path.parent.mkdir()
    with open(path, "wb") as f:
        f.write(bytes(range(256)) * 256)
        f.seek(3 * MiB)
        f.write(b"\x5a" * 4096)
        f.truncate(4 * MiB)
    path.chmod(0o444)  # the store's blobs are read-only; qemu-img must not need to write them
    return path


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def qemu_img_info(path) -> dict:
    return json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True,
                                     text=True, check=True).stdout)


def test_qemu_disk_is_a_qcow2_overlay_of_the_image(tmp_path, base):
    need("qemu-img")
    dest = tmp_path / "vm" / "disk.qcow2"
    dest.parent.mkdir()
    disks.create("qemu", base, dest, 16 * MiB)
    info = qemu_img_info(dest)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 16 * MiB
    assert info["backing-filename"] == str(base.resolve())
    assert info["backing-filename-format"] == "raw"
    assert os.listdir(dest.parent) == ["disk.qcow2"]  # no temporary left
    assert disks.allocated_bytes(dest) < MiB  # only metadata: no block of the image was copied


def test_qemu_disk_the_size_of_the_image(tmp_path, base):
    need("qemu-img")
    disks.create("qemu", base, tmp_path / "disk.qcow2", base.stat().st_size)
    assert qemu_img_info(tmp_path / "disk.qcow2")["virtual-size"] == 4 * MiB


@pytest.mark.parametrize("backend", ["qemu", "firecracker"])
def test_a_disk_smaller_than_the_image_is_refused_with_the_minimum(tmp_path, base, backend):
    base.chmod(0o644)
    with open(base, "ab") as f:
        f.write(b"x")  # 4 MiB + 1 byte: the minimum rounds up
    dest = tmp_path / "disk"
    with pytest.raises(VMStateError) as err:
        disks.create(backend, base, dest, 2 * MiB)
    message = str(err.value)
    assert message == "--disk-size 2M is smaller than the image (4M); give at least 5M"
    assert not dest.exists() and list(tmp_path.glob(".disk*")) == []


def test_writes_into_the_overlay_never_reach_the_image(tmp_path, base):
    need("qemu-img", "qemu-io")
    dest = tmp_path / "disk.qcow2"
    disks.create("qemu", base, dest, 8 * MiB)
    before = sha256(base)

    def qemu_io(*commands: str) -> str:
        argv = ["qemu-io", "-f", "qcow2"]
        for command in commands:
            argv += ["-c", command]
        proc = subprocess.run(argv + [str(dest)], capture_output=True, text=True)
        assert proc.returncode == 0 and "failed" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        return proc.stdout

    qemu_io("write -P 0xab 0 64k", "write -P 0xcd 6M 1M")  # over the image's data, and past its end
    qemu_io("read -P 0xab 0 64k", "read -P 0xcd 6M 1M", "read -P 0x5a 3M 4k", "read -P 0 5M 1M")
    assert sha256(base) == before
    assert base.read_bytes()[:256] == bytes(range(256))


def test_firecracker_disk_is_a_sparse_copy_of_the_requested_size(tmp_path, base):
    dest = tmp_path / "disk.raw"
    disks.create("firecracker", base, dest, 64 * MiB)
    assert dest.stat().st_size == 64 * MiB
    data = dest.read_bytes()
    assert data[:4 * MiB] == base.read_bytes() and data[4 * MiB:] == bytes(60 * MiB)
    assert disks.allocated_bytes(dest) < 2 * MiB  # the holes stayed holes (or it is a reflink)
    with open(dest, "r+b") as f:
        f.write(b"written by the guest")
    assert base.read_bytes()[:256] == bytes(range(256))


def test_allocated_bytes_of_a_missing_file(tmp_path):
    assert disks.allocated_bytes(tmp_path / "nope") == 0


def test_without_qemu_img_the_error_names_the_package(tmp_path, base, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(VMStateError, match="qemu-utils"):
        disks.create("qemu", base, tmp_path / "disk.qcow2", 8 * MiB)
    assert not (tmp_path / "disk.qcow2").exists()
