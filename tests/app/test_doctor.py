"""`banger doctor` on this host's real PATH and /dev/kvm: required vs optional, and what fixes each."""
from __future__ import annotations

import os
import shutil

from banger.app import doctor
from banger.hypervisor import kvm
from tests.support_tools import need

REQUIRED = [cmd for cmd, _, _ in doctor.REQUIRED]
OPTIONAL_PACKAGES = {"debootstrap": "debootstrap", "skopeo": "skopeo", "umoci": "umoci",
                     "docker-registry": "docker-registry", "busybox": "busybox-static", "zstd": "zstd"}


def path_with(tmp_path, tools) -> str:
    """A PATH directory holding only `tools` (links to this host's copies)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in tools:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return str(bin_dir)


def test_optional_missing_reads_differently_from_required_missing(tmp_path, monkeypatch):
    need(*REQUIRED)
    monkeypatch.setenv("PATH", path_with(tmp_path, [t for t in REQUIRED if t != "qemu-system-x86_64"]))
    rows = doctor.checks()
    by_name = {c.name: c for c in rows}
    qemu = by_name["qemu-system-x86_64"]
    assert (qemu.ok, qemu.required, qemu.state, qemu.fix) == (False, True, "MISSING", "apt-get install qemu-system-x86")
    for name, package in OPTIONAL_PACKAGES.items():
        row = by_name[name]
        assert (row.ok, row.required, row.state, row.fix) == (False, False, "absent", f"apt-get install {package}")
        assert row.needed_by and "MISSING" not in row.detail
    assert by_name["firecracker"].state == "absent" and not by_name["firecracker"].required
    text = doctor.lines(rows)
    assert "  MISSING  qemu-system-x86_64   missing: needed to boot VMs" in "\n".join(text)
    assert "  absent   skopeo               not installed" in text
    assert text[-1].startswith("1 required tool(s) MISSING: qemu-system-x86_64; optional, not available: "
                               "debootstrap, skopeo, docker-registry, nft, umoci, busybox, zstd, firecracker")
    assert not doctor.healthy(rows)


def test_all_required_present_is_healthy_whatever_optional_lacks(tmp_path, monkeypatch):
    need(*REQUIRED)
    monkeypatch.setenv("PATH", path_with(tmp_path, REQUIRED))
    rows = doctor.checks()
    assert doctor.healthy(rows) and all(c.ok for c in rows if c.required)
    assert doctor.lines(rows)[-1].startswith("every required tool is present; optional, not available: debootstrap")


def test_kvm_is_optional_and_an_emulated_one_is_present_without_acceleration():
    row = doctor.kvm_check()
    assert not row.required and row.name == kvm.DEVICE and "\n" not in row.detail
    if not os.path.exists(kvm.DEVICE):
        assert row.state == "absent"
    elif row.ok:
        assert row.state == "ok"
    elif os.access(kvm.DEVICE, os.R_OK | os.W_OK):  # there, but the probe's guest did not run natively
        assert row.state == "no-accel" and row.detail.startswith("present, no acceleration: ") and row.fix
    else:
        assert row.state == "no-accel" and "kvm group" in row.fix
