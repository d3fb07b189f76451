"""A Firecracker VM's disk: a reflink/sparse copy of the cached rootfs, grown to the size asked for,
that shares no writes with the image."""
from __future__ import annotations

import os

import pytest

from banger.vm import disks
from banger.vm.records import VMStateError

MiB = 1 << 20


@pytest.fixture
def base(tmp_path):
    """A 16 MiB image with 64 KiB of data at 0 and at 8 MiB, holes elsewhere."""
    path = tmp_path / "rootfs.ext4"
    with open(path, "wb") as f:
        f.truncate(16 * MiB)
        f.write(b"A" * 65536)
        f.seek(8 * MiB)
        f.write(b"B" * 65536)
    return path


def test_the_disk_is_a_sparse_copy_of_the_image_at_the_requested_size(tmp_path, base):
    assert disks.disk_name("firecracker") == "disk.raw"
    dest = tmp_path / "vm" / "disk.raw"
    dest.parent.mkdir()
    disks.create("firecracker", base, dest, 64 * MiB)

    assert dest.stat().st_size == 64 * MiB and base.stat().st_size == 16 * MiB
    # the holes stayed holes (a reflink shares the image's blocks: no more than those either)
    assert disks.allocated_bytes(dest) <= disks.allocated_bytes(base) + 256 * 1024 < 1 * MiB
    fd = os.open(dest, os.O_RDONLY)
    try:
        assert os.pread(fd, 65536, 0) == b"A" * 65536 and os.pread(fd, 65536, 8 * MiB) == b"B" * 65536
        assert os.pread(fd, 4096, 4 * MiB) == bytes(4096)  # a hole of the image
        assert os.pread(fd, 4096, 32 * MiB) == bytes(4096)  # the grown part
    finally:
        os.close(fd)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["disk.raw"]  # no temporary left

    with open(dest, "r+b") as f:  # the VM's writes never reach the cached image
        f.write(b"Z" * 65536)
    assert base.read_bytes()[:65536] == b"A" * 65536


def test_the_image_size_is_kept_when_no_size_is_asked_and_smaller_is_refused(tmp_path, base):
    same = tmp_path / "same.raw"
    disks.create("firecracker", base, same, base.stat().st_size)
    assert same.stat().st_size == 16 * MiB
    with pytest.raises(VMStateError, match=r"--disk-size 8M is smaller than the image \(16M\)"):
        disks.create("firecracker", base, tmp_path / "small.raw", 8 * MiB)
    assert not (tmp_path / "small.raw").exists()
