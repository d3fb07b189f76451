"""`banger vm` commands that need no boot: every refused create is one line and leaves nothing
behind, commands on unknown VMs name the fix, a running VM is removed only with --force (and
then its VMM is ended), created VMs pin what their disk needs, prune spares what runs."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from banger.core import procs
from banger.core import images, pins
from banger.hypervisor import process
from banger.vm import lifecycle, records
from banger.vm.lifecycle import CreateOptions
from banger.vm.records import VMStateError
from tests.support_tools import need
from tests.vm.conftest import as_running, write_record


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert message and "\n" not in message, repr(message)
    return message


def nothing_left(env) -> None:
    base = records.vms_dir(env.state)
    assert not base.exists() or list(base.iterdir()) == [], list(base.iterdir())
    assert not (env.store.root / "pins").exists() or list((env.store.root / "pins").iterdir()) == []


@pytest.mark.parametrize("opts, error, fragment", [
    (dict(name="Bad_Name"), VMStateError, "not a valid VM name"),
    (dict(name="a" * 64), VMStateError, "at most 63 characters"),
    (dict(memory="0"), VMStateError, "--memory '0' is not a size"),
    (dict(memory="abc"), VMStateError, "--memory 'abc' is not a size"),
    (dict(memory="64M"), VMStateError, "at least --memory 128M"),
    (dict(vcpus=0), VMStateError, "--vcpus 1"),
    (dict(net="foo"), VMStateError, "--net 'foo'; use --net user"),
    (dict(hypervisor="firecracker", net="user"), VMStateError, "Firecracker has no user-mode networking"),
    (dict(hypervisor="vmware"), VMStateError, "hypervisor='vmware'"),
    (dict(image=("no-such-image",)), images.ImageError, "no image named 'no-such-image'"),
    (dict(image=("Bad!",)), images.ImageError, "not a valid image name"),
    (dict(disk_size="1M"), VMStateError, "give at least 4M"),  # found after the name was reserved
    (dict(disk_size="lots"), VMStateError, "--disk-size 'lots' is not a size"),
])
def test_a_refused_create_is_one_line_and_leaves_nothing(vm_env, opts, error, fragment):
    need("qemu-img")
    options = CreateOptions(**{"image": ("tiny",), "start": False, **opts})
    with pytest.raises(error) as err:
        lifecycle.create(vm_env.dirs, options)
    assert fragment in one_line(err)
    nothing_left(vm_env)


def test_net_bridge_needs_root(vm_env, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(VMStateError) as err:
        lifecycle.create(vm_env.dirs, CreateOptions(image=("tiny",), net="bridge", start=False))
    assert "--net bridge needs root" in one_line(err) and "--net user" in str(err.value)
    nothing_left(vm_env)


def test_no_image_and_no_default_image(vm_env):
    with pytest.raises(VMStateError) as err:
        lifecycle.create(vm_env.dirs, CreateOptions(start=False))
    message = one_line(err)
    assert "no image named 'debian-bookworm'" in message and "banger demo" in message
    nothing_left(vm_env)


def test_an_image_that_lost_its_rootfs(vm_env):
    vm_env.store.remove(vm_env.image.artifacts["rootfs"])
    with pytest.raises(VMStateError) as err:
        lifecycle.create(vm_env.dirs, CreateOptions(image=("tiny",), start=False))
    assert "lost its rootfs" in one_line(err) and "banger build image=example.test/tiny:latest" in str(err.value)
    nothing_left(vm_env)


def test_create_without_start_makes_the_disk_record_and_pin(vm_env):
    need("qemu-img")
    vm_env.dirs.config.mkdir(parents=True)
    vm_env.dirs.config_file.write_text(json.dumps({"default_image": "tiny"}))
    record = lifecycle.create(vm_env.dirs, CreateOptions(start=False, vcpus=1, memory="512M", disk_size="8M"))
    assert records.NAME_RE.fullmatch(record.name)
    assert (record.state, record.image, record.backend, record.memory_mib) == ("created", "tiny", "qemu", 512)
    assert record.grow and record.disk_size == 8 * 2**20
    d = records.vm_dir(vm_env.state, record.name)
    assert records.load(vm_env.state, record.name) == record
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(d / record.disk)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["virtual-size"] == 8 * 2**20
    assert pins.pinned(vm_env.store.root) == {f"vm-{record.name}": set(vm_env.image.artifacts.values())}


@pytest.mark.parametrize("command", ["start", "stop", "remove", "restart", "get"])
def test_commands_on_an_unknown_vm(vm_env, command):
    with pytest.raises(VMStateError) as err:
        getattr(lifecycle, command)(vm_env.dirs, "ghost")
    assert one_line(err) == "no VM named 'ghost'; `banger vm list --all` shows them"
    assert not records.vms_dir(vm_env.state).exists()


def test_start_of_a_vm_whose_disk_is_gone(vm_env):
    record = write_record(vm_env, "dev", state="stopped")
    (records.vm_dir(vm_env.state, "dev") / record.disk).unlink()
    with pytest.raises(VMStateError) as err:
        lifecycle.start(vm_env.dirs, "dev")
    assert "dev cannot start: its disk" in one_line(err) and "`banger vm rm dev`" in str(err.value)


def test_start_of_a_running_vm(vm_env, sleeper):
    records.save(vm_env.state, as_running(write_record(vm_env, "dev"), sleeper().pid))
    with pytest.raises(VMStateError) as err:
        lifecycle.start(vm_env.dirs, "dev")
    assert one_line(err) == "dev is running already; `banger vm restart dev` restarts it"


def test_stop_of_a_vm_that_does_not_run_changes_nothing(vm_env):
    write_record(vm_env, "dev", state="stopped", reason="the guest powered off")
    assert lifecycle.stop(vm_env.dirs, "dev").reason == "the guest powered off"


@pytest.fixture
def kept_sleep():
    """`sleep` as a VM's VMM under the real keeper, detached: what `vm create` leaves running."""
    kept = []

    def start(vm_dir):
        k = process.spawn_kept(["sleep", "300"], exit_file=vm_dir / "exit.json", stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=None, cwd=vm_dir)
        k.detach()
        kept.append(k)
        return k

    yield start
    for k in kept:
        if k.keeper.poll() is None:
            k.keeper.kill()
        k.keeper.wait(10)


def test_rm_of_a_running_vm_needs_force_and_force_ends_its_vmm(vm_env, kept_sleep):
    need("qemu-img")
    record = lifecycle.create(vm_env.dirs, CreateOptions(image=("tiny",), name="dev", start=False))
    d = records.vm_dir(vm_env.state, "dev")
    vmm = kept_sleep(d)
    records.save(vm_env.state, as_running(record, vmm.vmm_pid))
    with pytest.raises(VMStateError) as err:
        lifecycle.remove(vm_env.dirs, "dev")
    assert one_line(err) == "dev is running; `banger vm stop dev` first, or `banger vm rm --force dev`"
    assert procs.alive(record.vmm_pid, record.vmm_start) and (d / "vm.json").exists()

    lifecycle.remove(vm_env.dirs, "dev", force=True)
    assert not procs.alive(record.vmm_pid, record.vmm_start)
    assert vmm.keeper.wait(10) == 0  # the keeper saw its VMM end and left
    assert not d.exists() and list(records.vms_dir(vm_env.state).iterdir()) == []
    assert pins.pinned(vm_env.store.root) == {}


def test_rm_force_of_a_running_vm_without_its_keeper(vm_env, sleeper):
    """A bare `sleep` of this test as the VMM: no QMP socket, no keeper to write exit.json."""
    vmm = sleeper()
    record = as_running(write_record(vm_env, "dev"), vmm.pid)
    records.save(vm_env.state, record)
    lifecycle.remove(vm_env.dirs, "dev", force=True)
    assert vmm.wait(10) < 0 and not procs.alive(record.vmm_pid, record.vmm_start)
    assert not records.vm_dir(vm_env.state, "dev").exists()


def test_rm_of_an_unreadable_record_needs_force(vm_env):
    write_record(vm_env, "dev")
    (records.vm_dir(vm_env.state, "dev") / "vm.json").write_text("{half")
    with pytest.raises(VMStateError) as err:
        lifecycle.remove(vm_env.dirs, "dev")
    assert "banger vm rm --force dev" in one_line(err)
    lifecycle.remove(vm_env.dirs, "dev", force=True)
    assert not records.vm_dir(vm_env.state, "dev").exists()


def test_rm_withdraws_the_ssh_entry_and_keeps_the_users_config(vm_env):
    ssh_config = vm_env.dirs.state.parent.parent / "ssh_config"
    ssh_config.write_text("Host mine\n  User me\n")
    write_record(vm_env, "dev", state="stopped")
    lifecycle.remove(vm_env.dirs, "dev")
    assert ssh_config.read_text() == "Host mine\n  User me\n"
    assert records.names(vm_env.state) == []


def test_prune_removes_what_does_not_run(vm_env, sleeper):
    for name, state in (("made", "created"), ("off", "stopped"), ("dead", "crashed")):
        write_record(vm_env, name, state=state)
    records.save(vm_env.state, as_running(write_record(vm_env, "live"), sleeper().pid))
    stale = records.vms_dir(vm_env.state) / ".removing-old-1"
    stale.mkdir()
    assert sorted(lifecycle.prune(vm_env.dirs)) == ["dead", "made", "off"]
    assert records.names(vm_env.state) == ["live"] and not stale.exists()


def test_all_vms_skips_unreadable_records(vm_env):
    write_record(vm_env, "good")
    write_record(vm_env, "bad")
    (records.vm_dir(vm_env.state, "bad") / "vm.json").write_text("[]")
    assert [r.name for r in lifecycle.all_vms(vm_env.dirs)] == ["good"]
