"""`banger doctor`: which host tools banger needs are present, and how to get the missing ones."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str


TOOLS = [  # (command, what it is for, Debian package)
    ("mkfs.ext4", "build ext4 images", "e2fsprogs"),
    ("debugfs", "apply ownership, inject files", "e2fsprogs"),
    ("e2fsck", "check built images", "e2fsprogs"),
    ("qemu-system-x86_64", "boot VMs (QEMU backend)", "qemu-system-x86"),
    ("resize2fs", "grow an image to fit kernel modules", "e2fsprogs"),
    ("depmod", "index kernel modules", "kmod"),
    ("dpkg-deb", "import Debian kernel packages", "dpkg"),
    ("apt-get", "pull Debian kernels and busybox", "apt"),
]


def checks() -> list[Check]:
    out = []
    for cmd, purpose, package in TOOLS:
        path = shutil.which(cmd)
        out.append(Check(cmd, path is not None, path or f"missing ({purpose})",
                         "" if path else f"apt-get install {package}"))
    fc = shutil.which("firecracker")
    out.append(Check("firecracker", fc is not None, fc or "missing (Firecracker backend; QEMU is used instead)",
                     "" if fc else "install the firecracker release binary on a KVM host and put it on PATH"))
    out.append(_kvm_check())
    return out


def _kvm_check() -> Check:
    if not os.path.exists("/dev/kvm"):
        return Check("/dev/kvm", False, "absent: VMs run under TCG (slow)", "enable virtualization / load kvm module")
    try:
        from banger.hypervisor.kvm import probe
    except ImportError:
        return Check("/dev/kvm", os.access("/dev/kvm", os.R_OK | os.W_OK), "present (vCPU not probed)", "")
    status = probe()
    return Check("/dev/kvm", status.usable, status.reason, "" if status.usable else
                 "use a host with working KVM (nested virtualization) for Firecracker / fast QEMU")
