"""A VM's own disk over the cached rootfs; the cached image is never written.

QEMU: a qcow2 overlay whose backing file is the cached raw image (QEMU opens a backing file
read-only), created by `qemu-img`; it holds only the blocks the VM writes. Firecracker: a raw
copy, a reflink where the filesystem can, sparse otherwise. A disk bigger than the image is
grown by the guest at its first boot (banger.grow=1: resize2fs on its root).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from banger.core import fsutil
from banger.engine.spec import MAX_SIZE
from banger.hypervisor import qemu_img
from banger.vm.records import VMStateError

SIZE_RE = re.compile(r"^\s*([0-9]+)\s*([KMGT]?)(i?B)?\s*$", re.I | re.ASCII)


def parse_size(text: str, what: str, example: str) -> int:
    """"2G", "512M", "1024K" or plain bytes -> bytes (at most MAX_SIZE)."""
    m = SIZE_RE.match(str(text))
    digits = m.group(1).lstrip("0") if m else ""
    if not digits:
        raise VMStateError(f"{what} {text!r} is not a size; use e.g. {example}")
    size = int(digits) * 1024 ** " KMGT".index((m.group(2) or " ").upper()) if len(digits) <= 20 else MAX_SIZE + 1
    if size > MAX_SIZE:
        shown = str(text) if len(str(text)) <= 24 else str(text)[:20] + "..."
        raise VMStateError(f"{what} {shown!r} is larger than banger supports; the largest is {what} {MAX_SIZE >> 40}T")
    return size


def disk_name(backend: str) -> str:
    return "disk.qcow2" if backend == "qemu" else "disk.raw"


def create(backend: str, base: Path, dest: Path, size: int, base_format: str = "raw",
           base_size: int | None = None) -> None:
    """Make dest, a disk of `size` bytes whose contents are base's: a raw ext4 image, or (QEMU) a
    snapshot's qcow2 disk layer of `base_size` virtual bytes."""
    base_size = base_size if base_size is not None else base.stat().st_size
    if size < base_size:
        raise VMStateError(f"--disk-size {size // 2**20}M is smaller than the image ({base_size // 2**20}M); "
                           f"give at least {-(-base_size // 2**20)}M")
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        if backend == "qemu":
            try:
                qemu_img.create_overlay(base, tmp, size, base_format)
            except qemu_img.QemuImgError as exc:
                raise VMStateError(str(exc)) from None
        else:
            fsutil.copy_sparse(base, tmp)
            os.truncate(tmp, size)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def allocated_bytes(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0
