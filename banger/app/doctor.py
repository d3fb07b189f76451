"""`banger doctor`: which host tools banger needs are present, and how to get the missing ones.

Required tools are what `banger build` (with its boot) and `banger kernel pull` run; optional ones
are what `banger demo` and the tests add, Firecracker, and KVM (without which QEMU emulates). Each
check says what needs it; a missing one carries the command that fixes it.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from banger.core.config import Dirs, load_config

OK, MISSING, ABSENT, NO_ACCEL = "ok", "MISSING", "absent", "no-accel"
KVM_NEEDED_BY = "Firecracker, and QEMU at hardware speed"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str
    required: bool = True
    state: str = OK  # ok | MISSING (required) | absent (optional) | no-accel (/dev/kvm, emulated)
    needed_by: str = ""  # for an optional check: what uses it


REQUIRED = [  # (command, what needs it, Debian package)
    ("mkfs.ext4", "build ext4 images", "e2fsprogs"),
    ("debugfs", "apply ownership, inject files", "e2fsprogs"),
    ("e2fsck", "check built images", "e2fsprogs"),
    ("resize2fs", "grow an image to fit kernel modules", "e2fsprogs"),
    ("qemu-system-x86_64", "boot VMs (QEMU backend; boot=no builds without it)", "qemu-system-x86"),
    ("depmod", "index kernel modules (kernel pull / import)", "kmod"),
    ("dpkg-deb", "import Debian kernel packages (kernel pull debian:...)", "dpkg"),
    ("apt-get", "pull Debian kernels and the initramfs's busybox-static", "apt"),
    ("qemu-img", "banger vm create (each VM's qcow2 disk over the cached image)", "qemu-utils"),
    ("ssh", "banger vm ssh, ssh NAME.vm", "openssh-client"),
]

OPTIONAL = [
    ("debootstrap", "banger demo (its Debian image, first run as root) and the tests' Debian image",
     "debootstrap"),
    ("skopeo", "banger demo (pushes its image to the local registry) and the registry tests", "skopeo"),
    ("docker-registry", "banger demo (its local registry) and the registry tests", "docker-registry"),
    ("nft", "banger vm create --net bridge (outbound NAT)", "nftables"),
    ("umoci", "tests that unpack OCI layouts to compare with banger's trees", "umoci"),
    ("busybox", "tests that run the guest scripts under busybox sh", "busybox-static"),
    ("zstd", "banger vm create restoring a VM from its image's snapshot (else VMs boot cold)", "zstd"),
]


def checks() -> list[Check]:
    out = [_tool(cmd, purpose, package, required=True) for cmd, purpose, package in REQUIRED]
    out += [_tool(cmd, purpose, package, required=False) for cmd, purpose, package in OPTIONAL]
    fc = shutil.which("firecracker")
    out.append(Check("firecracker", fc is not None, fc or "not installed (QEMU is used instead)",
                     "" if fc else "install the firecracker release binary on a KVM host and put it on PATH",
                     required=False, state=OK if fc else ABSENT, needed_by="hypervisor=firecracker"))
    out.append(kvm_check())
    out.append(dns_check())
    return out


def dns_check() -> Check:
    """Whether NAME.vm resolves beyond ssh (bridge mode with systemd-resolved): informational."""
    from banger.net.dns import dns_status

    line = dns_status()
    resolved = "through systemd-resolved" in line
    return Check("NAME.vm names", resolved, line, "" if resolved else "ssh NAME.vm works through ~/.ssh/config",
                 required=False, state=OK if resolved else ABSENT, needed_by="resolving NAME.vm outside ssh")


def fix_network(dirs: Dirs) -> list[str]:
    """`banger doctor --fix`: remove the bridge leases, taps and NAT of VMs that no longer exist."""
    from banger.net import bridge

    try:
        settings = bridge.BridgeSettings.from_config(load_config(dirs))
        return bridge.cleanup(dirs.state, settings, keep=lambda vm: (dirs.state / "vms" / vm / "vm.json").exists())
    except bridge.NetError as exc:
        return [f"not fixed: {exc}"]


def _tool(cmd: str, purpose: str, package: str, required: bool) -> Check:
    path = shutil.which(cmd)
    needed_by = "" if required else purpose
    if path:
        return Check(cmd, True, path, "", required, needed_by=needed_by)
    detail = f"missing: needed to {purpose}" if required else "not installed"
    return Check(cmd, False, detail, f"apt-get install {package}", required, MISSING if required else ABSENT,
                 needed_by)


def kvm_check() -> Check:
    """/dev/kvm is optional (QEMU falls back to TCG); present but emulated is not "missing"."""
    from banger.hypervisor import kvm

    device = kvm.DEVICE
    if not os.path.exists(device):
        return Check(device, False, "absent: VMs run under QEMU's TCG (slow)",
                     "enable virtualization (VT-x/AMD-V, or nested virtualization) and load the kvm module",
                     required=False, state=ABSENT, needed_by=KVM_NEEDED_BY)
    status = kvm.probe()
    if status.usable:
        return Check(device, True, status.reason, "", required=False, needed_by=KVM_NEEDED_BY)
    if not os.access(device, os.R_OK | os.W_OK):
        return Check(device, False, f"present, not usable: {status.reason}",
                     "add this user to the kvm group", required=False, state=NO_ACCEL, needed_by=KVM_NEEDED_BY)
    return Check(device, False, f"present, no acceleration: {status.reason}; VMs run under QEMU's TCG (slow)",
                 "use a host whose KVM runs guests natively (hardware or nested virtualization) "
                 "for Firecracker and fast QEMU", required=False, state=NO_ACCEL, needed_by=KVM_NEEDED_BY)


def lines(rows: list[Check]) -> list[str]:
    """The listing: required checks, then optional ones, then one verdict line."""
    out: list[str] = []
    for required, title in ((True, "required (banger build, boot and kernel pull):"),
                            (False, "optional (banger works without them; each says what needs it):")):
        out.append(title)
        for c in (c for c in rows if c.required == required):
            out.append(f"  {c.state:<8} {c.name:<20} {c.detail}")
            if c.needed_by:
                out.append(f"  {'':<8} {'':<20} for: {c.needed_by}")
            if c.fix:
                out.append(f"  {'':<8} {'':<20} fix: {c.fix}")
    missing = [c.name for c in rows if c.required and not c.ok]
    optional = [c.name for c in rows if not c.required and not c.ok]
    verdict = (f"{len(missing)} required tool(s) MISSING: {', '.join(missing)}" if missing
               else "every required tool is present")
    out.append(verdict + (f"; optional, not available: {', '.join(optional)}" if optional else ""))
    return out


def healthy(rows: list[Check]) -> bool:
    """Every required check passed (optional ones do not count)."""
    return all(c.ok for c in rows if c.required)
