"""qcow2 overlays with `qemu-img` (the qemu-utils package): a VM's own disk over a cached image,
and a snapshot's frozen disk layer, whose backing file is named relative to itself."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


class QemuImgError(RuntimeError):
    """qemu-img is missing or failed; the message is one line."""


def _run(argv: list[str], what: str) -> None:
    binary = shutil.which("qemu-img")
    if binary is None:
        raise QemuImgError("`qemu-img` is not installed; install the qemu-utils package")
    proc = subprocess.run([binary, *argv], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise QemuImgError(f"qemu-img could not {what}: {' '.join(proc.stderr.split()) or proc.returncode}")


def create_overlay(base: Path, dest: Path, size: int, base_format: str = "raw") -> None:
    """dest: a qcow2 image of `size` bytes whose unwritten blocks read from `base` (opened
    read-only by QEMU); it holds only the blocks written to it."""
    _run(["create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base.resolve()), "-o", "lazy_refcounts=on",
          str(dest), str(size)], f"create a disk over {base.name}")


def rebase_relative(disk: Path, backing: Path, anchor: Path, backing_format: str = "raw") -> None:
    """Name `disk`'s backing file relative to `anchor`, the directory the disk will live in."""
    _run(["rebase", "-u", "-f", "qcow2", "-F", backing_format, "-b", os.path.relpath(backing, anchor), str(disk)],
         f"rebase {disk.name}")
