"""Pick the backend that boots the VM: Firecracker, QEMU with KVM, or QEMU under TCG.

`auto` takes the fastest one that can really run here and says why; a backend asked for by
name that cannot run raises one line naming what is missing.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Callable

from banger.hypervisor import kvm

QEMU = "qemu-system-x86_64"
FIRECRACKER = "firecracker"
BACKENDS = ("auto", "qemu", "firecracker")


class HypervisorError(RuntimeError):
    """The requested backend cannot run here; the message is one line."""


@dataclass(frozen=True)
class Choice:
    backend: str  # "qemu" | "firecracker"
    accel: str  # "kvm" | "tcg"
    machine: str  # "microvm" | "pc" (QEMU's -M; Firecracker is always a microvm)
    reason: str  # one line: why this one
    binary: str  # absolute path of the VMM


def tap_problem() -> str | None:
    """Why Firecracker's tap networking cannot be set up by this process, or None."""
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun does not exist"
    if os.geteuid() != 0:
        return "tap networking needs root (run as root, or use hypervisor=qemu with user-mode networking)"
    return None


def check(requested: str = "auto", *, kvm_status: Callable[[], kvm.KvmStatus] = kvm.cached_probe,
          which: Callable[[str], str | None] = shutil.which) -> None:
    """Raise choose()'s HypervisorError now if `requested` cannot run here (a build calls this before
    its first step). With QEMU on PATH, auto and qemu always can (under TCG at worst), so /dev/kvm
    is probed only for hypervisor=firecracker or when QEMU is missing."""
    if requested == "firecracker" or requested not in BACKENDS or which(QEMU) is None:
        choose(requested, kvm_status=kvm_status, which=which)


def choose(requested: str = "auto", *, kvm_status: Callable[[], kvm.KvmStatus] = kvm.cached_probe,
           which: Callable[[str], str | None] = shutil.which) -> Choice:
    if requested not in BACKENDS:
        raise HypervisorError(f"hypervisor={requested!r}; use one of: {', '.join(BACKENDS)}")
    status = kvm_status()
    qemu, firecracker = which(QEMU), which(FIRECRACKER)

    if requested in ("auto", "firecracker"):
        missing = []
        if not status.usable:
            missing.append(status.reason)
        if firecracker is None:
            missing.append(f"`{FIRECRACKER}` is not on PATH")
        if not missing and (problem := tap_problem()):
            missing.append(problem)
        if not missing:
            assert firecracker is not None
            return Choice("firecracker", "kvm", "microvm", f"KVM works ({status.reason}) and {firecracker} is installed",
                          firecracker)
        if requested == "firecracker":
            raise HypervisorError(f"hypervisor=firecracker cannot run here: {'; '.join(missing)}; "
                                  "use hypervisor=qemu or hypervisor=auto")
        why_not_firecracker = "; ".join(missing)
    else:
        why_not_firecracker = "hypervisor=qemu was asked for"

    if qemu is None:
        raise HypervisorError(f"no usable hypervisor: `{QEMU}` is not on PATH "
                              f"(install the qemu-system-x86 package); Firecracker: {why_not_firecracker}")
    if status.usable:
        return Choice("qemu", "kvm", "microvm", f"QEMU with KVM ({status.reason}); not Firecracker: "
                      f"{why_not_firecracker}", qemu)
    # -M microvm hangs intermittently under TCG; the pc machine does not
    return Choice("qemu", "tcg", "pc", f"QEMU under TCG (software emulation, slow): {status.reason}", qemu)
