"""Firecracker snapshots, held to the official API contract (no firecracker binary, no KVM here):
every request goes to the fake (tests/firecracker_fake.py), which validates it against
firecracker-api.yaml and refuses what the real one refuses (pause before the start, a snapshot
of a running microVM, a load into a configured one, a load whose disk is not where the state
says). Its snapshot files are its own format: what is proven here is banger's side of the
contract (requests, order, files, the resume channel), not that a real guest survives it.
"""
from __future__ import annotations

import json
import os
import stat

import pytest

from banger.hypervisor import choice as hypervisor
from banger.hypervisor.firecracker import FirecrackerAPI, FirecrackerError, FirecrackerVM
from banger.hypervisor.vm import GuestNetwork, TapNIC, VMConfig
from banger.rootfs import guest_assets
from banger.rootfs.sshkey import new_host_key
from tests.firecracker_fake import STDIN_ENV, FakeFirecracker, SpecViolation
from tests.hypervisor.test_firecracker import fake, fake_binary, guest_files, spec  # noqa: F401  (fixtures)
from tests.hypervisor.test_firecracker_kept import requests_checked

SNAP_TAP = TapNIC("bgrsnap0", "06:00:ac:1e:00:02", GuestNetwork("172.30.0.2/30", "172.30.0.1", None))
VM_TAP = TapNIC("bgtvm0001", "52:54:00:ab:cd:07", GuestNetwork("172.31.0.7/24", "172.31.0.1", "172.31.0.1"))
USER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIx8uUmoTtf6ZQ2N2HZtE1ZlYQOdJ8Ea3o1i9Tf7TJZB me@host"


# ---- the API calls, one by one -------------------------------------------------------------------
@pytest.mark.parametrize("method, path, body, problem", [
    ("PATCH", "/vm", {"state": "Stopped"}, "not one of"),
    ("PATCH", "/vm", {}, "missing required field 'state'"),
    ("PUT", "/snapshot/create", {"snapshot_path": "s"}, "missing required field 'mem_file_path'"),
    ("PUT", "/snapshot/create", {"snapshot_path": "s", "mem_file_path": "m", "snapshot_type": "full"}, "not one of"),
    ("PUT", "/snapshot/load", {"mem_backend": {"backend_type": "File", "backend_path": "m"}},
     "missing required field 'snapshot_path'"),
    ("PUT", "/snapshot/load", {"snapshot_path": "s", "mem_backend": {"backend_type": "Disk", "backend_path": "m"}},
     "not one of"),
    ("PUT", "/snapshot/load", {"snapshot_path": "s", "mem_backend": {"backend_path": "m"}},
     "missing required field 'backend_type'"),
    ("PUT", "/snapshot/load", {"snapshot_path": "s", "network_overrides": [{"iface_id": "eth0"}]},
     "missing required field 'host_dev_name'"),
    ("PUT", "/snapshot/load", {"snapshot_path": "s", "resume": True}, "unknown field 'resume'"),
])
def test_validator_rejects_invalid_snapshot_requests(spec, method, path, body, problem):
    with pytest.raises(SpecViolation, match=problem):
        spec.validate_request(method, path, body)


def boot(api: FirecrackerAPI, files: dict, disk) -> None:
    api.put_machine_config(1, 256)
    api.put_boot_source(files["vmlinux"], "console=ttyS0")
    api.put_drive("rootfs", disk, root=True)
    api.put_network_interface("eth0", SNAP_TAP.name, SNAP_TAP.mac)
    api.instance_start()


def test_pause_snapshot_and_resume_send_exactly_the_spec_bodies(fake, guest_files, tmp_path):
    api = FirecrackerAPI(fake.socket_path)
    boot(api, guest_files, guest_files["rootfs.ext4"])
    api.pause()
    api.create_snapshot(tmp_path / "vmstate.bin", tmp_path / "memory.bin")
    api.resume()
    api.patch_drive("rootfs", guest_files["rootfs.ext4"])
    assert fake.state.violations == []
    sent = [(r.method, r.path, r.body, r.status) for r in fake.state.requests[-4:]]
    assert sent == [
        ("PATCH", "/vm", {"state": "Paused"}, 204),
        ("PUT", "/snapshot/create", {"snapshot_type": "Full", "snapshot_path": str(tmp_path / "vmstate.bin"),
                                     "mem_file_path": str(tmp_path / "memory.bin")}, 204),
        ("PATCH", "/vm", {"state": "Resumed"}, 204),
        ("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": str(guest_files["rootfs.ext4"])}, 204)]
    assert (tmp_path / "memory.bin").stat().st_size == 256 << 20 and (tmp_path / "vmstate.bin").stat().st_size


def test_load_sends_the_file_backend_paused_without_dirty_tracking_and_the_new_tap(fake, spec, guest_files, tmp_path):
    with_boot = FirecrackerAPI(tmp_path / "first.sock")
    with FakeFirecracker(tmp_path / "first.sock", spec):
        boot(with_boot, guest_files, guest_files["rootfs.ext4"])
        with_boot.pause()
        with_boot.create_snapshot(tmp_path / "vmstate.bin", tmp_path / "memory.bin")
    api = FirecrackerAPI(fake.socket_path)
    (tmp_path / "fc.log").touch()
    api.put_logger(tmp_path / "fc.log")  # the logger may come first
    api.load_snapshot(tmp_path / "vmstate.bin", tmp_path / "memory.bin", tap=VM_TAP.name)
    assert fake.state.violations == []
    load = fake.state.requests[-1]
    assert (load.method, load.path, load.status) == ("PUT", "/snapshot/load", 204)
    assert load.body == {"snapshot_path": str(tmp_path / "vmstate.bin"),
                         "mem_backend": {"backend_type": "File", "backend_path": str(tmp_path / "memory.bin")},
                         "enable_diff_snapshots": False, "resume_vm": False,
                         "network_overrides": [{"iface_id": "eth0", "host_dev_name": VM_TAP.name}]}
    assert api.describe_instance()["state"] == "Running" and fake.state.paused  # loaded, not resumed
    assert fake.state.config["/network-interfaces/{iface_id}"]["eth0"]["host_dev_name"] == VM_TAP.name
    api.resume()
    assert not fake.state.paused


def test_what_the_real_firecracker_refuses_is_refused(fake, guest_files, tmp_path):
    api = FirecrackerAPI(fake.socket_path)
    with pytest.raises(FirecrackerError, match="not supported before starting"):
        api.pause()
    with pytest.raises(FirecrackerError, match="not supported before starting"):
        api.create_snapshot(tmp_path / "s", tmp_path / "m")
    with pytest.raises(FirecrackerError, match="not supported before starting"):
        api.patch_drive("rootfs", guest_files["rootfs.ext4"])
    api.put_boot_source(guest_files["vmlinux"], "console=ttyS0")
    with pytest.raises(FirecrackerError, match=r"^Firecracker refused PUT /snapshot/load \(HTTP 400\): Loading a "
                                               r"microVM snapshot not allowed after configuring"):
        api.load_snapshot(guest_files["rootfs.ext4"], guest_files["rootfs.ext4"])
    api.put_drive("rootfs", guest_files["rootfs.ext4"], root=True)
    api.instance_start()
    with pytest.raises(FirecrackerError, match="not paused"):
        api.create_snapshot(tmp_path / "s", tmp_path / "m")
    with pytest.raises(FirecrackerError, match="not supported after starting"):
        api.load_snapshot(guest_files["rootfs.ext4"], guest_files["rootfs.ext4"])
    with pytest.raises(FirecrackerError, match="Could not find block device with id data"):
        api.request("PATCH", "/drives/data", {"drive_id": "data", "path_on_host": str(guest_files["rootfs.ext4"])})
    assert not (tmp_path / "s").exists() and fake.state.violations == []


# ---- a whole save and restore, the fake as the `firecracker` binary ------------------------------------
def vm(files: dict, exe, run_dir, **extra) -> FirecrackerVM:
    choice = hypervisor.Choice("firecracker", "kvm", "microvm", "test", str(exe))
    run_dir.mkdir(parents=True, exist_ok=True)
    config = VMConfig(kernel=files["vmlinux"], vmlinux=files["vmlinux"], initrd=files["initrd.img"],
                      run_dir=run_dir, memory_mib=256, vcpus=1, cmdline="banger.snapshot=1",
                      resume_fifo=run_dir / "console.in", portable_disk=True, **extra)
    return FirecrackerVM(choice, config)


def save(files, exe, tmp_path):
    """A snapshot VM as the snapshot step makes one: its disk named in its run dir, saved to stage."""
    run_dir, stage = tmp_path / "snap-run", tmp_path / "stage"
    stage.mkdir()
    run_dir.mkdir()
    disk = run_dir / "disk.raw"
    disk.write_bytes(b"the snapshot VM's disk" + bytes(4096))
    first = vm(files, exe, run_dir, disk=disk, tap=SNAP_TAP)
    with first:
        first.wait_for_console_line(r"^BANGER_SNAPSHOT_READY", timeout=20)
        assert os.readlink(f"/proc/{first.vmm_pid}/fd/0") == str(run_dir / "console.in")  # attached: the FIFO too
        saved = first.save_machine(stage, timeout=20)
    return saved, disk


def message() -> tuple[bytes, str]:
    private, public = new_host_key()
    return guest_assets.resume_message("fc-1", "0123456789abcdef0123456789abcdef", USER_KEY, private, public,
                                       clock=1795900000.0, seed=b"\x07" * 32, grow_to_sectors=16,
                                       network=VM_TAP.network, mac=VM_TAP.mac), " ".join(public.split()[:2])


def test_a_saved_vm_restores_in_another_dir_and_reads_exactly_the_message_from_its_fifo(
        tmp_path, guest_files, fake_binary, spec, monkeypatch):
    exe, record = fake_binary
    received = tmp_path / "guest-read.bin"
    monkeypatch.setenv(STDIN_ENV, str(received))
    saved, snap_disk = save(guest_files, exe, tmp_path)
    assert sorted(saved) == ["memory", "vmstate"] and all(p.parent == tmp_path / "stage" for p in saved.values())
    state = json.loads(saved["vmstate"].read_text())
    assert state["config"]["/drives/{drive_id}"]["rootfs"]["path_on_host"] == "disk.raw"  # relative to its dir
    snapshot_requests = requests_checked(record, spec)
    assert [(r["method"], r["path"]) for r in snapshot_requests][-2:] == [("PATCH", "/vm"), ("PUT", "/snapshot/create")]
    record.unlink()

    vm_dir = tmp_path / "vms" / "fc-1"
    vm_dir.mkdir(parents=True)
    (vm_dir / "disk.raw").write_bytes(snap_disk.read_bytes() + bytes(8192))  # the VM's own, grown copy
    restored = vm(guest_files, exe, vm_dir, disk=vm_dir / "disk.raw", tap=VM_TAP, kept=vm_dir / "exit.json",
                  restore_state=saved["vmstate"], restore_memory=saved["memory"])
    data, wanted_key = message()
    try:
        restored.start()
        assert stat.S_ISFIFO((vm_dir / "console.in").stat().st_mode)
        assert os.readlink(f"/proc/{restored.vmm_pid}/fd/0") == str(vm_dir / "console.in")  # the keeper handed the FIFO to the VMM as its stdin
        restored.wait_loaded(5)
        restored.resume_guest(grow_to=(vm_dir / "disk.raw").stat().st_size)
        channel = restored.send_resume(data)
        seen: list[str] = []
        ready = restored.wait_for_console_line(r"^BANGER_READY", timeout=20, seen=seen)
        channel.close()
        assert guest_assets.parse_hostkey_lines(seen, ready.split()[1]) == [wanted_key]
        assert restored.ssh_address == ("172.31.0.7", 22)
        assert restored.shutdown(None, timeout=20)
    finally:
        restored.stop()
    assert received.read_bytes() == data  # exactly the message, nothing lost or added
    requests = requests_checked(record, spec)
    assert [(r["method"], r["path"]) for r in requests] == [
        ("PUT", "/logger"), ("PUT", "/snapshot/load"), ("PATCH", "/vm"), ("PATCH", "/drives/rootfs"),
        ("PUT", "/actions")]
    load = requests[1]["body"]
    assert load["mem_backend"] == {"backend_type": "File", "backend_path": str(saved["memory"])}
    assert load["network_overrides"] == [{"iface_id": "eth0", "host_dev_name": VM_TAP.name}]
    assert requests[3]["body"] == {"drive_id": "rootfs", "path_on_host": "disk.raw"}
    assert not (vm_dir / "console.in").exists() and (vm_dir / "disk.raw").exists()  # the FIFO goes, the disk stays


def test_a_restore_without_the_disk_the_state_names_is_refused_in_one_line(tmp_path, guest_files, fake_binary):
    exe, _ = fake_binary
    saved, _ = save(guest_files, exe, tmp_path)
    vm_dir = tmp_path / "vms" / "fc-2"
    restored = vm(guest_files, exe, vm_dir, tap=VM_TAP, restore_state=saved["vmstate"],
                  restore_memory=saved["memory"])
    with pytest.raises(FirecrackerError) as caught:
        restored.start()
    assert str(caught.value) == ("Firecracker refused PUT /snapshot/load (HTTP 400): "
                                 "Cannot open disk.raw: No such file or directory (os error 2)")
    assert not restored.running


def test_without_a_reader_the_channel_refuses_at_once(tmp_path, guest_files):
    """No Firecracker holds the FIFO: opening it for the message fails (ENXIO) instead of hanging."""
    run_dir = tmp_path / "run"
    lone = vm(guest_files, "/nonexistent", run_dir)
    os.mkfifo(run_dir / "console.in")
    with pytest.raises(OSError):
        lone.send_resume(b"BANGER_RESUME x\n")
