"""Reconciling records with what runs: why a VMM ended (every branch of classify_exit), a live
VMM recognised by pid AND start time, records rewritten only under the lock, and `broken`
when a VM's disk or an artifact it needs is gone."""
from __future__ import annotations

import json

import pytest

from banger.core import procs
from banger.vm import records, status
from tests.vm.conftest import as_running, write_record

BOOT_1 = "Linux version 6.1\nBANGER_READY\nreboot: Power down\n"
BOOT_2 = "Linux version 6.1\nBANGER_READY\n"


def vm_files(env, name: str, console: str | None = None, returncode: int | None = None):
    d = records.vm_dir(env.state, name)
    if console is not None:
        (d / "console.log").write_text(console)
    if returncode is not None:
        (d / "exit.json").write_text(json.dumps({"pid": 1, "returncode": returncode, "detached": True, "at": 0}))
    return d


@pytest.mark.parametrize("state, stop_requested, console, code, offset, expected", [
    ("stopping", True, "Kernel panic - not syncing\n", -9, 0, ("stopped", "stopped by banger")),
    ("starting", False, "", None, 0, ("stopped", "interrupted while starting")),
    ("running", False, BOOT_1, 0, 0, ("stopped", "the guest powered off")),
    ("running", False, BOOT_2 + "reboot: Restarting system\n", 0, 0, ("stopped", "the guest rebooted")),
    ("running", False, BOOT_2 + "Kernel panic - not syncing: Attempted to kill init!\n", 0, 0,
     ("crashed", "the guest kernel panicked")),
    ("running", False, BOOT_2 + "Kernel panic - not syncing\nreboot: Restarting system\n", 0, 0,
     ("crashed", "the guest kernel panicked")),  # panic=-1: a panicking guest reboots
    ("running", False, BOOT_2 + "Kernel panic - not syncing\n", None, 0, ("crashed", "the guest kernel panicked")),
    ("running", False, BOOT_2, None, 0, ("crashed", "the VMM and its keeper vanished")),
    ("running", False, BOOT_2, -9, 0, ("crashed", "the VMM was killed by SIGKILL")),
    ("running", False, BOOT_2, -15, 0, ("crashed", "the VMM was killed by SIGTERM")),
    ("running", False, BOOT_2, -200, 0, ("crashed", "the VMM was killed by signal 200")),
    ("running", False, BOOT_2, 1, 0, ("crashed", "the VMM exited with code 1")),
    ("running", False, BOOT_2, 0, 0, ("crashed", "the VMM exited with code 0")),  # 0, yet no power-down seen
    # the power-down line of an earlier boot (before console_offset) says nothing about this one
    ("running", False, BOOT_1 + BOOT_2, 0, len(BOOT_1), ("crashed", "the VMM exited with code 0")),
    ("running", False, BOOT_1 + BOOT_2 + "reboot: Power down\n", 0, len(BOOT_1), ("stopped", "the guest powered off")),
    ("stopping", False, BOOT_1 + BOOT_2, -9, len(BOOT_1), ("crashed", "the VMM was killed by SIGKILL")),
])
def test_classify_exit(vm_env, state, stop_requested, console, code, offset, expected):
    record = write_record(vm_env, "dev", state=state, stop_requested=stop_requested, console_offset=offset)
    d = vm_files(vm_env, "dev", console, code)
    got_state, reason = status.classify_exit(record, d)
    assert (got_state, reason[:len(expected[1])]) == expected, reason
    assert "\n" not in reason


def test_a_guest_reboot_says_how_to_start_it_again(vm_env):
    record = write_record(vm_env, "dev", state="running")
    d = vm_files(vm_env, "dev", BOOT_2 + "reboot: Restarting system\n", 0)
    assert "`banger vm start dev`" in status.classify_exit(record, d)[1]


def test_no_console_log_at_all(vm_env):
    record = write_record(vm_env, "dev", state="running")
    d = vm_files(vm_env, "dev", None, 1)
    assert status.classify_exit(record, d) == ("crashed", "the VMM exited with code 1")


def test_reconcile_leaves_a_live_vmm_alone(vm_env, sleeper):
    vmm = sleeper()
    record = as_running(write_record(vm_env, "dev"), vmm.pid)
    records.save(vm_env.state, record)
    before = (records.vm_dir(vm_env.state, "dev") / "vm.json").read_bytes()
    assert status.vmm_alive(record)
    assert status.reconcile(vm_env.state, record) == record
    assert records.load(vm_env.state, "dev").state == "running"
    assert (records.vm_dir(vm_env.state, "dev") / "vm.json").read_bytes() == before


def test_reconcile_settles_a_reused_pid(vm_env, sleeper):
    """The pid runs, but it is another process (its start time differs): the VMM is gone."""
    vmm = sleeper()

    record = as_running(write_record(vm_env, "dev"), vmm.pid, started=procs.start_time(vmm.pid) - 1)
    records.save(vm_env.state, record)
    vm_files(vm_env, "dev", BOOT_2, -9)
    assert not status.vmm_alive(record)
    settled = status.reconcile(vm_env.state, record)
    assert (settled.state, settled.reason) == ("crashed", "the VMM was killed by SIGKILL")
    assert (settled.vmm_pid, settled.vmm_start) == (0, None)
    assert records.load(vm_env.state, "dev") == settled
    assert vmm.poll() is None  # the unrelated process was not touched


def test_reconcile_trusts_the_record_while_another_command_holds_the_lock(vm_env, sleeper, lock_holder):
    vmm = sleeper()
    record = as_running(write_record(vm_env, "dev"), vmm.pid)
    record.state = "starting"
    records.save(vm_env.state, record)
    vmm.kill()
    vmm.wait()
    holder = lock_holder(vm_env.state, "dev")  # e.g. the `vm create` still booting it
    assert status.reconcile(vm_env.state, record).state == "starting"
    assert records.load(vm_env.state, "dev").state == "starting"
    holder.stdin.close()
    holder.wait(10)
    settled = status.reconcile(vm_env.state, record)
    assert settled.state == "stopped" and "interrupted" in settled.reason
    assert records.load(vm_env.state, "dev").state == "stopped"


@pytest.mark.parametrize("state", ["created", "stopped", "crashed"])
def test_reconcile_does_not_touch_a_record_that_is_not_live(vm_env, state):
    record = write_record(vm_env, "dev", state=state, reason="why")
    assert status.reconcile(vm_env.state, record) is record


def test_display_state_of_a_healthy_vm_is_its_state(vm_env):
    record = write_record(vm_env, "dev", state="stopped", reason="the guest powered off")
    assert status.display_state(record, vm_env.state) == ("stopped", "the guest powered off")
    assert status.problems(record, vm_env.state) == []


def test_display_state_is_broken_without_the_disk(vm_env):
    record = write_record(vm_env, "dev", state="stopped")
    (records.vm_dir(vm_env.state, "dev") / record.disk).unlink()
    state, reason = status.display_state(record, vm_env.state)
    assert state == "broken" and "disk" in reason and "missing" in reason
    assert reason.endswith("`banger vm rm dev` removes it") and "\n" not in reason


@pytest.mark.parametrize("artifact", ["rootfs", "kernel", "initrd"])
def test_display_state_is_broken_when_a_cached_artifact_is_gone(vm_env, artifact):
    record = write_record(vm_env, "dev", state="created")
    vm_env.store.remove(vm_env.image.artifacts[artifact])
    state, reason = status.display_state(record, vm_env.state)
    assert state == "broken" and f"its {artifact} (" in reason and "gone from the cache" in reason


def test_a_running_vm_is_not_shown_broken(vm_env, sleeper):
    """Its VMM holds the files open; what it lacks matters at its next start."""
    record = as_running(write_record(vm_env, "dev"), sleeper().pid)
    vm_env.store.remove(vm_env.image.artifacts["rootfs"])
    assert status.display_state(record, vm_env.state)[0] == "running"


def test_console_tail_and_console_since(vm_env):
    record = write_record(vm_env, "dev")
    d = vm_files(vm_env, "dev", BOOT_1 + BOOT_2)
    assert status.console_since(d / "console.log", len(BOOT_1)) == BOOT_2
    assert status.console_since(d / "nothing.log", 0) == ""
    assert status.console_tail(vm_env.state, record, 2) == ["Linux version 6.1", "BANGER_READY"]
