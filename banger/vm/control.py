"""Talking to a running VM from any banger process: power it off through the guest (SSH with
the managed key, ACPI over QMP as a fallback), query it, or end the VMM.

QMP goes through banger.hypervisor.qmp (the maintained `qemu.qmp` library).
"""
from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

from banger.core import procs
from banger.hypervisor import qmp as qmp_client
from banger.vm.records import VMRecord

POWEROFF_GRACE = 20.0  # seconds for the guest's own poweroff before ACPI is asked too


def qmp(socket_path: Path, command: str, **arguments) -> dict | None:
    """Run one QMP command; None when the socket does not answer."""
    return qmp_client.command(socket_path, command, **arguments)


def guest_poweroff(record: VMRecord, private_key: Path, timeout: float = 10.0) -> bool:
    """Ask the guest to power off over SSH (its service manager stops units cleanly)."""
    import paramiko

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.MissingHostKeyPolicy())
    try:
        client.connect(record.address, record.ssh_port, username="root", key_filename=str(private_key),
                       look_for_keys=False, allow_agent=False, timeout=timeout, banner_timeout=timeout,
                       auth_timeout=timeout)
        if record.host_key and _key_line(client) != record.host_key:
            return False  # not our VM answering on that address: do not send it anything
        _, stdout, _ = client.exec_command("systemctl poweroff || poweroff", timeout=timeout)
        with contextlib.suppress(Exception):  # the connection may drop as the guest goes down
            stdout.channel.recv_exit_status()  # closing at once could cut the request short
        return True
    except Exception:
        return False
    finally:
        client.close()


def _key_line(client) -> str:
    key = client.get_transport().get_remote_server_key()
    return f"{key.get_name()} {key.get_base64()}"


def power_off(vm_dir: Path, record: VMRecord, private_key: Path, timeout: float) -> bool:
    """A clean power-off, True when the VMM ended within `timeout`: the guest's service manager
    first (over SSH), then ACPI (a request queued while the guest's boot jobs still run can be
    lost), each given part of the time."""
    deadline = time.monotonic() + timeout
    if guest_poweroff(record, private_key) and wait_gone(record, min(POWEROFF_GRACE, timeout)):
        return True
    acpi_poweroff(vm_dir, record)
    return wait_gone(record, max(0.0, deadline - time.monotonic()))


def acpi_poweroff(vm_dir: Path, record: VMRecord) -> bool:
    if record.backend == "qemu":
        return qmp(vm_dir / "qmp.sock", "system_powerdown") is not None
    from banger.hypervisor.firecracker import FirecrackerAPI, FirecrackerError

    try:  # Firecracker's guest reboots on Ctrl-Alt-Del, which ends the Firecracker process
        FirecrackerAPI(vm_dir / "api.sock").send_ctrl_alt_del()
        return True
    except FirecrackerError:
        return False


def wait_gone(record: VMRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while procs.alive(record.vmm_pid, record.vmm_start):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def kill(vm_dir: Path, record: VMRecord) -> None:
    """End the VMM now: QMP `quit` (QEMU flushes its disk), then SIGTERM, then SIGKILL."""
    if record.backend == "qemu" and qmp(vm_dir / "qmp.sock", "quit") is not None:
        if wait_gone(record, 5.0):  # (no answer: nothing was asked, waiting would only cost 5 s)
            return
    procs.signal_process(record.vmm_pid, record.vmm_start, signal.SIGTERM)
    if not wait_gone(record, 10.0):
        procs.signal_process(record.vmm_pid, record.vmm_start, signal.SIGKILL)
        wait_gone(record, 10.0)


def wait_exit_file(vm_dir: Path, timeout: float = 5.0) -> None:
    """The keeper writes exit.json right after the VMM ends: give it a moment."""
    deadline = time.monotonic() + timeout
    while not (vm_dir / "exit.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
