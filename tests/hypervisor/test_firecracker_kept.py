"""Firecracker for the VMs `banger vm` keeps, held to the official API contract: the fake Firecracker
(tests/firecracker_fake.py, which validates every request against firecracker-api.yaml) stands in
for the `firecracker` binary, run by the keeper as the real one would be.

A kept VM boots from its own disk (never copied over, never deleted) on the tap banger.net made
(no tap of its own); detached, it outlives the process that started it, and the keeper records its
exit. A run dir too deep for a unix socket path still works.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from banger.core import procs
from banger.hypervisor import choice as hypervisor
from banger.hypervisor.firecracker import FirecrackerAPI, FirecrackerVM, Tap
from banger.hypervisor.vm import GuestNetwork, TapNIC, VMConfig
from tests.firecracker_fake import Spec
from tests.hypervisor.test_firecracker import fake_binary, guest_files, spec  # noqa: F401  (fixtures)
from tests.support_tools import REPO

TAP = TapNIC("bgt0123abcd", "06:00:ac:1e:00:07", GuestNetwork("172.30.0.7/24", "172.30.0.1", "192.0.2.53"))
MARK = b"the VM's own disk, written by earlier boots"
UNIX_PATH_MAX = 108


def kept_vm(run_dir: Path, files: dict[str, Path], exe: Path, disk: Path) -> FirecrackerVM:
    """A VM as banger.vm.launch makes one: its disk, its tap, under the keeper."""
    choice = hypervisor.Choice("firecracker", "kvm", "microvm", "test", str(exe))
    config = VMConfig(kernel=files["vmlinux"], vmlinux=files["vmlinux"], initrd=files["initrd.img"],
                      rootfs=files["rootfs.ext4"],  # given too: it must not be copied over the disk
                      disk=disk, run_dir=run_dir, memory_mib=768, vcpus=1, cmdline="panic=-1",
                      tap=TAP, kept=run_dir / "exit.json")
    return FirecrackerVM(choice, config)


def make_disk(run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    disk = run_dir / "disk.raw"
    disk.write_bytes(MARK + b"\0" * (1 << 20))
    return disk


def requests_checked(record: Path, spec: Spec) -> list[dict]:
    """Every request the fake served, each valid per the spec and answered with success."""
    requests = [json.loads(line) for line in record.read_text().splitlines()]
    for r in requests:
        spec.validate_request(r["method"], r["path"], r["body"])  # raises SpecViolation
        assert r["status"] in (200, 204), r
    return requests


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_kept_vm_boots_its_own_disk_on_the_given_tap_per_spec_and_keeps_the_disk(
        tmp_path, guest_files, fake_binary, spec, monkeypatch):
    exe, record = fake_binary
    monkeypatch.setattr(Tap, "create", lambda self: pytest.fail("a kept VM made a tap of its own"))
    run_dir = tmp_path / "vms" / "fc1"
    disk = make_disk(run_dir)
    inode = disk.stat().st_ino
    vm = kept_vm(run_dir, guest_files, exe, disk)
    try:
        vm.start()
        assert vm.wait_for_console_line(r"^BANGER_READY", timeout=20) == "BANGER_READY"
        assert vm.kept is not None and vm.vmm_pid != vm.process.pid  # the keeper runs the VMM
        assert procs.alive(vm.vmm_pid, procs.start_time(vm.vmm_pid))
        assert vm.tap is None and vm.ssh_address == ("172.30.0.7", 22)
        assert vm.shutdown(None, timeout=20), "SendCtrlAltDel did not end the (fake) firecracker"
    finally:
        vm.stop()

    requests = requests_checked(record, spec)
    assert [(r["method"], r["path"]) for r in requests] == [
        ("PUT", "/logger"), ("PUT", "/machine-config"), ("PUT", "/boot-source"), ("PUT", "/drives/rootfs"),
        ("PUT", "/network-interfaces/eth0"), ("PUT", "/vsock"), ("PUT", "/actions"), ("PUT", "/actions")]
    bodies = {r["path"]: r["body"] for r in requests}
    assert bodies["/drives/rootfs"] == {"drive_id": "rootfs", "path_on_host": str(disk), "is_root_device": True,
                                        "is_read_only": False}
    assert bodies["/network-interfaces/eth0"] == {"iface_id": "eth0", "host_dev_name": TAP.name,
                                                  "guest_mac": TAP.mac}
    args = bodies["/boot-source"]["boot_args"].split()
    assert {"rw", "banger.ip=172.30.0.7/24", "banger.gw=172.30.0.1", "banger.dns=192.0.2.53", "panic=-1"} <= set(args)
    assert bodies["/machine-config"] == {"vcpu_count": 1, "mem_size_mib": 768, "smt": False}
    # the disk is the same file with the same bytes, and nothing was copied next to it
    assert disk.stat().st_ino == inode and disk.read_bytes().startswith(MARK)
    assert not (run_dir / "rootfs.ext4").exists()
    assert json.loads((run_dir / "exit.json").read_text())["returncode"] == 0
    assert not vm.api_socket.exists() and not vm.vsock_socket.exists()


def start_detached(args: str) -> None:
    """In a child process: start a kept VM, wait until ready, detach, print its VMM's pid, exit."""
    a = json.loads(args)
    Tap.create = lambda self: sys.exit("a kept VM made a tap of its own")  # never in the host's namespace
    files = {k: Path(v) for k, v in a["files"].items()}
    vm = kept_vm(Path(a["run_dir"]), files, Path(a["exe"]), Path(a["disk"]))
    vm.start()
    vm.wait_for_console_line(r"^BANGER_READY", timeout=20)
    vm.detach()
    print(json.dumps({"vmm_pid": vm.vmm_pid, "vmm_start": procs.start_time(vm.vmm_pid)}))


def test_a_detached_kept_vm_outlives_its_starter_and_the_keeper_records_its_exit(
        tmp_path, guest_files, fake_binary, spec):
    exe, record = fake_binary
    run_dir = tmp_path / "vms" / "fc2"
    disk = make_disk(run_dir)
    args = json.dumps({"run_dir": str(run_dir), "exe": str(exe), "disk": str(disk),
                       "files": {k: str(v) for k, v in guest_files.items()}})
    child = subprocess.run([sys.executable, "-c", "import sys; from tests.hypervisor.test_firecracker_kept "
                            "import start_detached; start_detached(sys.argv[1])", args],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    vmm = json.loads(child.stdout)
    exit_file = run_dir / "exit.json"
    try:
        time.sleep(0.5)
        assert procs.alive(vmm["vmm_pid"], vmm["vmm_start"]), "the VM died with the process that started it"
        assert not exit_file.exists()
        # another banger process powers it off through the API socket (banger.vm.control does)
        FirecrackerAPI(run_dir / "api.sock").send_ctrl_alt_del()
        wait_for(exit_file.exists, 10, "the keeper's exit file")
        wait_for(lambda: not procs.alive(vmm["vmm_pid"], vmm["vmm_start"]), 10, "the VMM to end")
    finally:
        procs.signal_process(vmm["vmm_pid"], vmm["vmm_start"], 9)
    status = json.loads(exit_file.read_text())
    assert (status["pid"], status["returncode"], status["detached"]) == (vmm["vmm_pid"], 0, True)
    assert disk.read_bytes().startswith(MARK)
    assert [r["body"]["action_type"] for r in requests_checked(record, spec) if r["path"] == "/actions"] == [
        "InstanceStart", "SendCtrlAltDel"]
    assert "reboot: Restarting system" in (run_dir / "console.log").read_text()


def test_a_run_dir_too_deep_for_a_socket_path_still_works(tmp_path, guest_files, fake_binary, spec):
    exe, record = fake_binary
    run_dir = tmp_path.joinpath(*["a-rather-long-directory-name"] * 4, "vms", "fc3")
    disk = make_disk(run_dir)
    vm = kept_vm(run_dir, guest_files, exe, disk)
    assert len(str(vm.api_socket).encode()) > UNIX_PATH_MAX
    try:
        vm.start()
        vm.wait_for_console_line(r"^BANGER_READY", timeout=20)
        argv = Path(f"/proc/{vm.vmm_pid}/cmdline").read_bytes().split(b"\0")
        assert argv[argv.index(b"--api-sock") + 1] == b"api.sock"  # relative: its cwd is the run dir
        assert FirecrackerAPI(run_dir / "api.sock").describe_instance()["state"] == "Running"
        assert vm.shutdown(None, timeout=20)
    finally:
        vm.stop()
    for r in requests_checked(record, spec):  # no socket path Firecracker binds is too long either
        assert len(str((r["body"] or {}).get("uds_path", "")).encode()) < UNIX_PATH_MAX
    assert disk.exists() and not vm.api_socket.exists()
