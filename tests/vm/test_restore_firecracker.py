"""`banger vm create`'s Firecracker snapshot path, as far as a fake can take it (no firecracker
binary, no KVM here): the snapshot step (app.snapshot.ensure, through doit) boots the image with
the fake as the `firecracker` binary, pauses it and saves it; vm/restore.py starts a new VM from
that: a new Firecracker process, /snapshot/load with the VM's own tap, resume, the identity
message into the FIFO that is the VMM's stdin. The fake validates every request against the
official spec and plays resume.sh's console lines; the SSH login is the one stand-in (there is
no guest to log into). Host networking (the bridge lease) and the ssh config are stand-ins too:
they are not this test's subject and would touch the host.
"""
from __future__ import annotations

import ipaddress
import json
import types
from pathlib import Path

import pytest

from banger.app import snapshot
from banger.core import config
from banger.core.store import Store
from banger.hypervisor import choice as hypervisor
from banger.hypervisor.firecracker import FirecrackerAPI, Tap
from banger.net.settings import Lease
from banger.rootfs import guest_assets
from banger.rootfs.guest_assets import SCRIPTS_DIR
from banger.steps import snapshot as step
from banger.vm import disks, launch, records, restore
from banger.vm.records import VMRecord
from tests.firecracker_fake import STDIN_ENV
from tests.hypervisor.test_firecracker import fake_binary, spec  # noqa: F401  (fixtures)
from tests.hypervisor.test_firecracker_kept import requests_checked, wait_for
from tests.steps.test_snapshot import ext4_with

LEASE = Lease("fc-1", "172.31.0.7/24", "172.31.0.1", "bgtfc0001", "52:54:00:ab:cd:07", "172.31.0.1")
MiB = 1 << 20
IMAGE_SIZE = 16 * MiB  # ext4_with's


@pytest.fixture
def world(tmp_path, fake_binary, monkeypatch):
    exe, record = fake_binary
    dirs = config.Dirs(cache=tmp_path / "cache", state=tmp_path / "state", config=tmp_path / "config")
    for d in (dirs.cache, dirs.state, dirs.config):
        d.mkdir(parents=True)
    store = Store(dirs.cache)
    artifacts = {}
    image = tmp_path / "image"
    image.mkdir()
    # a real ext4 file system with resume.sh: the step checks that before it boots anything
    artifacts["rootfs"] = store.ingest_file(ext4_with(image, {f"{SCRIPTS_DIR}/resume.sh": "#!/bin/sh\n"}))
    for name, data in (("kernel", b"bzImage"), ("vmlinux", b"ELF"), ("initrd", b"initrd")):
        (tmp_path / name).write_bytes(data)
        artifacts[name] = store.ingest_file(tmp_path / name)
    fc = hypervisor.Choice("firecracker", "kvm", "microvm", "test", str(exe))
    for where in (hypervisor, restore):
        monkeypatch.setattr(where, "choose", lambda backend="auto": fc)
    # the snapshot VM's own tap: no root, no host change
    monkeypatch.setattr(Tap, "allocate", classmethod(lambda cls: cls("bgrsnaptest", ipaddress.ip_network("172.30.8.0/30"))))
    monkeypatch.setattr(Tap, "create", lambda self: None)
    leases = []
    monkeypatch.setattr(launch.network, "attach", lambda d, s, name: leases.append(name) or LEASE)
    monkeypatch.setattr(launch.network, "release", lambda d, s, name: leases.append(f"-{name}"))
    monkeypatch.setattr(restore.access, "publish", lambda d, s, rec: None)
    sent = []
    real_message = guest_assets.resume_message
    monkeypatch.setattr(restore.guest_assets, "resume_message",
                        lambda *a, **k: sent.append(real_message(*a, **k)) or sent[-1])
    monkeypatch.setenv(STDIN_ENV, str(tmp_path / "guest-read.bin"))
    return types.SimpleNamespace(dirs=dirs, store=store, artifacts=artifacts, record=record, leases=leases,
                                 sent=sent, read=tmp_path / "guest-read.bin", choice=fc)


def sent_key(message: bytes) -> str:
    """The host key the host sent the guest (banger.hostkey=TYPE:BASE64), as "TYPE BASE64"."""
    word = next(w for w in message.split(b"\n", 1)[0].decode().split() if w.startswith("banger.hostkey="))
    return word.split("=", 1)[1].replace(":", " ", 1)


def logged_in_with(key_line: str):
    """ssh_login's stand-in: a client whose server presents `key_line`'s key (the guest's sshd
    would present the key resume.sh installed)."""
    kind, data = key_line.split()[:2]
    server = types.SimpleNamespace(get_name=lambda: kind, get_base64=lambda: data)
    transport = types.SimpleNamespace(get_remote_server_key=lambda: server)
    return types.SimpleNamespace(get_transport=lambda: transport, close=lambda: None)


def new_vm(world, disk_size: int) -> VMRecord:
    rec = VMRecord(name="fc-1", id="0123456789abcdef0123456789abcdef", image="img", image_ref="img",
                   artifacts=dict(world.artifacts), cache=str(world.store.root), backend="firecracker", vcpus=1,
                   memory_mib=256, disk_size=disk_size, disk=disks.disk_name("firecracker"), net="bridge",
                   created=0.0)
    records.vm_dir(world.dirs.state, rec.name).mkdir(parents=True)
    return rec


def take(world):
    shape = snapshot.Shape("firecracker", "kvm", "microvm", 1, 256, "tap")
    snap, status = snapshot.ensure(world.dirs, world.artifacts, shape, lambda m: None)
    assert status == "ran"
    return snap


def test_a_firecracker_snapshot_is_taken_and_a_vm_restored_from_it(world, spec, monkeypatch):
    snap = take(world)
    assert sorted(snap.outputs) == ["disk", "memory", "vmstate"]
    assert {"banger.resume_channel=/dev/ttyS0", "systemd.mask=serial-getty@ttyS0.service"} <= set(
        snap.params["cmdline"].split())
    assert snap.tools == {"firecracker": "Firecracker v1.17.0-dev-fake"}
    saved = requests_checked(world.record, spec)
    assert [(r["method"], r["path"]) for r in saved][-3:] == [("PUT", "/actions"), ("PATCH", "/vm"),
                                                              ("PUT", "/snapshot/create")]
    assert "banger.resume_channel=/dev/ttyS0" in saved[2]["body"]["boot_args"]
    state = json.loads(world.store.path(snap.outputs["vmstate"]).read_text())
    assert state["config"]["/drives/{drive_id}"]["rootfs"]["path_on_host"] == "disk.raw"
    disk = world.store.path(snap.outputs["disk"])
    assert disk.read_bytes() == world.store.path(world.artifacts["rootfs"]).read_bytes()  # raw, the rootfs's bytes
    world.record.unlink()

    rec = new_vm(world, 32 * MiB)  # larger than the image: the guest is told its disk grew
    vm_dir = records.vm_dir(world.dirs.state, rec.name)
    disks.create("firecracker", disk, vm_dir / rec.disk, rec.disk_size, base_format="qcow2",
                 base_size=disk.stat().st_size)  # what lifecycle.create does with a snapshot
    monkeypatch.setattr(launch, "ssh_login", lambda vm, key, deadline: logged_in_with(sent_key(world.sent[0])))
    try:
        done = restore.restore(world.dirs, rec, snap)
        assert (done.state, done.snapshot, done.address) == ("running", snap.key, "172.31.0.7")
        assert done.host_key == sent_key(world.sent[0])
        assert world.read.read_bytes() == world.sent[0]  # the guest read exactly the message
        words = world.sent[0].split(b"\n", 1)[0].decode().split()
        assert {"banger.name=fc-1", "banger.ip=172.31.0.7/24", "banger.mac=52:54:00:ab:cd:07",
                f"banger.disk_sectors={32 * MiB // 512}"} <= set(words)
        assert not (vm_dir / "memory.bin").exists()  # mapped by Firecracker, then removed
    finally:
        if (vm_dir / "api.sock").exists():  # the VM runs detached: end it
            FirecrackerAPI(vm_dir / "api.sock").send_ctrl_alt_del()
            wait_for((vm_dir / "exit.json").exists, 10, "the restored VM's exit")
    restored = requests_checked(world.record, spec)
    assert [(r["method"], r["path"]) for r in restored] == [
        ("PUT", "/logger"), ("PUT", "/snapshot/load"), ("PATCH", "/vm"), ("PATCH", "/drives/rootfs"),
        ("PUT", "/actions")]
    assert restored[1]["body"]["network_overrides"] == [{"iface_id": "eth0", "host_dev_name": LEASE.tap}]
    assert restored[2]["body"] == {"state": "Resumed"}
    assert world.leases == ["fc-1"]



def test_a_state_firecracker_refuses_is_unusable_and_leaves_nothing_running(world):
    snap = take(world)
    state = world.store.path(snap.outputs["vmstate"])
    state.chmod(0o644)
    state.write_bytes(b"x" * state.stat().st_size)
    # damage that stat() cannot see (bit rot): the store's quick check trusts it, Firecracker's load refuses it
    world.store._stamp(snap.outputs["vmstate"]).write_text(world.store._stat_key(state))
    rec = new_vm(world, IMAGE_SIZE)
    vm_dir = records.vm_dir(world.dirs.state, rec.name)
    disks.create("firecracker", world.store.path(snap.outputs["disk"]), vm_dir / rec.disk, rec.disk_size)
    with pytest.raises(restore.SnapshotUnusable) as caught:
        restore.restore(world.dirs, rec, snap)
    assert str(caught.value) == ("the VM failed before it ran: Firecracker refused PUT /snapshot/load (HTTP 400): "
                                 "Cannot deserialize the microVM state: not a snapshot")
    saved = records.load(world.dirs.state, rec.name)
    assert (saved.state, saved.vmm_pid) == ("crashed", 0)
    assert world.leases == ["fc-1", "-fc-1"]  # the tap went back
    assert world.sent == [] and not (vm_dir / "memory.bin").exists() and not (vm_dir / "api.sock").exists()


def test_a_damaged_memory_file_is_unusable_before_anything_starts(world):
    snap = take(world)
    memory = world.store.path(snap.outputs["memory"])
    memory.chmod(0o644)
    data = bytearray(memory.read_bytes())
    data[len(data) // 2] ^= 0xFF
    memory.write_bytes(bytes(data))
    rec = new_vm(world, IMAGE_SIZE)
    with pytest.raises(restore.SnapshotUnusable, match="damaged or gone"):
        restore.restore(world.dirs, rec, snap)
    assert world.leases == [] and not (records.vm_dir(world.dirs.state, rec.name) / "memory.bin").exists()


def test_vm_create_uses_a_firecracker_snapshot_for_a_bridge_vm(world, monkeypatch):
    from banger.vm import lifecycle

    monkeypatch.setattr(lifecycle, "choose", lambda backend="auto": world.choice)
    snap = lifecycle._snapshot_for(world.dirs, new_vm(world, IMAGE_SIZE), lambda m: None)
    assert snap is not None and snap.outputs.keys() == {"disk", "memory", "vmstate"}
    assert {k: snap.params[k] for k in ("backend", "net", "vcpus", "memory_mib")} == {
        "backend": "firecracker", "net": "tap", "vcpus": 1, "memory_mib": 256}
