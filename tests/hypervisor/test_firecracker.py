"""Firecracker contract tests: every request banger sends is checked against the official spec.

There is no firecracker binary here, so a fake serves the API (tests/firecracker_fake.py); the
fake validates each request against firecracker-api.yaml and answers as the real one does.
"""
from __future__ import annotations

import ipaddress
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from banger.hypervisor import choice as hypervisor
from banger.hypervisor.firecracker import FirecrackerAPI, FirecrackerError, FirecrackerVM, Tap
from banger.hypervisor.vm import VMConfig, VMError
from tests.conftest import need
from tests.firecracker_fake import RECORD_ENV, FakeFirecracker, Spec, SpecViolation, spec_path

FAKE = Path(__file__).resolve().parents[1] / "firecracker_fake.py"


@pytest.fixture(scope="module")
def spec() -> Spec:
    path = spec_path()
    assert path.exists(), f"the Firecracker API spec is missing at {path}; set BANGER_FIRECRACKER_SPEC"
    return Spec(path)


@pytest.fixture
def fake(spec, tmp_path):
    with FakeFirecracker(tmp_path / "api.sock", spec) as server:
        yield server


@pytest.fixture
def guest_files(tmp_path):
    files = {}
    for name in ("vmlinux", "initrd.img", "rootfs.ext4"):
        files[name] = tmp_path / name
        files[name].write_bytes(b"\0" * 4096)
    return files


# ---- the validator itself ----------------------------------------------------------------------
@pytest.mark.parametrize("method, path, body, problem", [
    ("PUT", "/boot-source", {"boot_args": "console=ttyS0"}, "missing required field 'kernel_image_path'"),
    ("PUT", "/boot-source", {"kernel_image_path": 42}, "expected string"),
    ("PUT", "/drives/rootfs", {"drive_id": "rootfs", "is_root_device": "true"}, "expected boolean"),
    ("PUT", "/drives/rootfs", {"drive_id": "rootfs", "is_root_device": True, "readonly": True}, "unknown field 'readonly'"),
    ("PUT", "/drives/rootfs", {"drive_id": "rootfs", "is_root_device": True, "io_engine": "Uring"}, "not one of"),
    ("PUT", "/machine-config", {"vcpu_count": 0, "mem_size_mib": 512}, "below the minimum"),
    ("PUT", "/machine-config", {"vcpu_count": 64, "mem_size_mib": 512}, "above the maximum"),
    ("PUT", "/machine-config", {"vcpu_count": True, "mem_size_mib": 512}, "expected integer"),
    ("PUT", "/machine-config", {"vcpu_count": 1}, "missing required field 'mem_size_mib'"),
    ("PUT", "/network-interfaces/eth0", {"iface_id": "eth0"}, "missing required field 'host_dev_name'"),
    ("PUT", "/vsock", {"guest_cid": 2, "uds_path": "/x"}, "below the minimum"),
    ("PUT", "/actions", {"action_type": "Reboot"}, "not one of"),
    ("PUT", "/actions", None, "needs a body"),
    ("PUT", "/nonsense", {}, "no path"),
    ("DELETE", "/drives/rootfs", None, "not an operation"),
    ("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 1, "rate_limiter": {"bandwidth": {"size": 1}}},
     "unknown field 'rate_limiter'"),
    ("PUT", "/drives/r", {"drive_id": "r", "is_root_device": True, "rate_limiter": {"bandwidth": {"size": 1}}},
     "missing required field 'refill_time'"),  # through two $refs
])
def test_validator_rejects_invalid_requests(spec, method, path, body, problem):
    with pytest.raises(SpecViolation, match=problem.replace("(", r"\(")):
        spec.validate_request(method, path, body)


def test_validator_accepts_valid_requests(spec):
    assert spec.validate_request("PUT", "/drives/rootfs", {
        "drive_id": "rootfs", "is_root_device": True, "path_on_host": "/x", "is_read_only": False,
        "rate_limiter": {"bandwidth": {"size": 10, "refill_time": 100}}}) == "/drives/{drive_id}"
    assert spec.validate_request("GET", "/", None) == "/"
    assert spec.validate_request("PUT", "/mmds", {"anything": {"goes": 1}}) == "/mmds"  # additionalProperties: true


# ---- the client against the fake ------------------------------------------------------------------
def _vm(tmp_path, files, network: bool) -> FirecrackerVM:
    choice = hypervisor.Choice("firecracker", "kvm", "microvm", "test", "/nonexistent/firecracker")
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    config = VMConfig(kernel=files["vmlinux"], vmlinux=files["vmlinux"], initrd=files["initrd.img"],
                      rootfs=files["rootfs.ext4"], run_dir=run_dir, memory_mib=768, vcpus=2,
                      cmdline="panic=-1", network=network)
    return FirecrackerVM(choice, config)


def test_boot_sequence_is_valid_per_spec(fake, tmp_path, guest_files):
    vm = _vm(tmp_path, guest_files, network=True)
    vm.api = FirecrackerAPI(fake.socket_path)
    vm.tap = Tap("bgrtest", ipaddress.ip_network("172.30.8.0/30"))
    vm.network = vm.tap.guest_network
    vm.disk.write_bytes(b"\0" * 4096)  # what _launch's copy of the rootfs would be
    vm.firecracker_log.touch()
    vm.configure(guest_files["vmlinux"])
    vm.api.instance_start()
    assert vm.api.describe_instance()["state"] == "Running"
    vm.api.send_ctrl_alt_del()

    assert fake.state.violations == []
    assert [(r.method, r.path, r.status) for r in fake.state.requests] == [
        ("PUT", "/logger", 204), ("PUT", "/machine-config", 204), ("PUT", "/boot-source", 204),
        ("PUT", "/drives/rootfs", 204), ("PUT", "/network-interfaces/eth0", 204), ("PUT", "/vsock", 204),
        ("PUT", "/actions", 204), ("GET", "/", 200), ("PUT", "/actions", 204)]
    bodies = {r.path: r.body for r in fake.state.requests}
    assert bodies["/machine-config"] == {"vcpu_count": 2, "mem_size_mib": 768, "smt": False}
    boot = bodies["/boot-source"]
    assert boot["kernel_image_path"] == str(guest_files["vmlinux"])
    assert boot["initrd_path"] == str(guest_files["initrd.img"])
    assert "console=ttyS0" in boot["boot_args"] and "banger.ip=172.30.8.2/30 banger.gw=172.30.8.1" in boot["boot_args"]
    assert bodies["/drives/rootfs"]["path_on_host"] == str(vm.disk) != str(guest_files["rootfs.ext4"])
    assert bodies["/network-interfaces/eth0"] == {"iface_id": "eth0", "host_dev_name": "bgrtest",
                                                  "guest_mac": "06:00:ac:1e:08:02"}
    assert [r.body["action_type"] for r in fake.state.requests if r.path == "/actions"] == ["InstanceStart",
                                                                                           "SendCtrlAltDel"]


def test_fault_message_surfaces_as_one_line(fake, guest_files):
    fake.state.fail["/boot-source"] = "Invalid kernel path:\n  the file is not an ELF"
    api = FirecrackerAPI(fake.socket_path)
    with pytest.raises(FirecrackerError) as err:
        api.put_boot_source(guest_files["vmlinux"], "console=ttyS0")
    assert str(err.value) == ("Firecracker refused PUT /boot-source (HTTP 400): "
                              "Invalid kernel path: the file is not an ELF")


def test_real_rules_surface_too(fake, tmp_path, guest_files):
    api = FirecrackerAPI(fake.socket_path)
    with pytest.raises(FirecrackerError, match="Cannot start microvm without kernel configuration"):
        api.instance_start()
    with pytest.raises(FirecrackerError, match="No such file or directory"):
        api.put_boot_source(tmp_path / "missing-vmlinux", "console=ttyS0")
    api.put_boot_source(guest_files["vmlinux"], "console=ttyS0")
    api.instance_start()
    with pytest.raises(FirecrackerError, match="not supported after starting"):
        api.put_machine_config(1, 128)
    assert fake.state.violations == []


def test_a_dead_socket_is_one_line(tmp_path):
    with pytest.raises(FirecrackerError, match=r"^Firecracker API PUT /actions over .* failed: "):
        FirecrackerAPI(tmp_path / "nothing.sock").instance_start()


# ---- the whole VM lifecycle with the fake as the `firecracker` binary -----------------------------
@pytest.fixture
def fake_binary(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "firecracker"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} \"$@\"\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    record = tmp_path / "requests.jsonl"
    monkeypatch.setenv(RECORD_ENV, str(record))
    monkeypatch.setenv("PYTHONPATH", str(FAKE.parent.parent))
    return exe, record


def _links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


def test_firecracker_vm_lifecycle_leaves_nothing_behind(tmp_path, guest_files, fake_binary):
    need("ip")
    if hypervisor.tap_problem():
        pytest.skip(f"tap networking unavailable: {hypervisor.tap_problem()}")
    exe, record = fake_binary
    vm = _vm(tmp_path, guest_files, network=True)
    vm.choice = hypervisor.Choice("firecracker", "kvm", "microvm", "test", str(exe))
    with vm:
        line = vm.wait_for_console_line(r"^BANGER_READY", timeout=20)
        assert line == "BANGER_READY"
        host, port = vm.ssh_address
        assert port == 22 and host == str(vm.tap.guest_ip)
        tap = vm.tap.name
        assert f" {tap}:" in _links()
        assert vm.api_socket.exists() and vm.disk.exists()
        assert vm.shutdown(None, timeout=20), "SendCtrlAltDel did not end the (fake) firecracker"
    assert f" {tap}:" not in _links()
    assert not vm.api_socket.exists() and not vm.disk.exists() and not vm.vsock_socket.exists()
    assert "reboot: Restarting system" in vm.console_log.read_text()
    requests = [json.loads(line) for line in record.read_text().splitlines()]
    assert all(r["status"] in (200, 204) for r in requests), requests
    assert [r["path"] for r in requests][-2:] == ["/actions", "/actions"]


def test_firecracker_that_dies_at_start_is_reported_with_its_output(tmp_path, guest_files):
    exe = tmp_path / "firecracker"
    exe.write_text("#!/bin/sh\necho 'Error: unable to open /dev/kvm' >&2\nexit 1\n")
    exe.chmod(0o755)
    vm = _vm(tmp_path, guest_files, network=False)
    vm.choice = hypervisor.Choice("firecracker", "kvm", "microvm", "test", str(exe))
    with pytest.raises(VMError) as err:
        vm.start()
    message = str(err.value)
    assert "exited with code 1 before opening its API socket" in message
    assert "unable to open /dev/kvm" in message and f"full console log: {vm.console_log}" in message
    assert not vm.running and not vm.disk.exists()
