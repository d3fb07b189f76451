"""Reconcile a VM's record with what really runs.

A record in a live state (starting/running/stopping) whose VMM process is gone (checked by pid
AND start time) becomes `stopped` when the guest powered off or banger stopped it, else
`crashed`, with the reason and the keeper's exit status. Records are only rewritten under the
VM's lock; a VM another command holds is shown as its record says.
"""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Iterator

from banger.core.store import Store
from banger.core import procs
from banger.hypervisor.vm import tail_lines
from banger.vm import records
from banger.vm.records import LIVE_STATES, VMRecord

POWER_DOWN = "reboot: Power down"
RESTARTING = "reboot: Restarting system"
PANIC = "Kernel panic"


def vmm_alive(record: VMRecord) -> bool:
    return procs.alive(record.vmm_pid, record.vmm_start)


def console_since(path: Path, offset: int, limit: int = 256 * 1024) -> str:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(offset, size - limit))
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def exit_status(vm_dir: Path) -> dict | None:
    try:
        return json.loads((vm_dir / "exit.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def classify_exit(record: VMRecord, vm_dir: Path) -> tuple[str, str]:
    """(state, reason) for a VM whose VMM is gone."""
    if record.stop_requested:
        return "stopped", "stopped by banger"
    if record.state == "starting":
        return "stopped", "interrupted while starting (the command that started it ended before the VM was ready)"
    console = console_since(vm_dir / "console.log", record.console_offset)
    status = exit_status(vm_dir)
    code = status.get("returncode") if status else None
    if code == 0 and POWER_DOWN in console:
        return "stopped", "the guest powered off"
    if code == 0 and RESTARTING in console and PANIC not in console:
        return "stopped", f"the guest rebooted (a reboot ends a banger VM; `banger vm start {record.name}`)"
    if PANIC in console:
        return "crashed", "the guest kernel panicked"
    if status is None:
        return "crashed", "the VMM and its keeper vanished (killed?)"
    if isinstance(code, int) and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return "crashed", f"the VMM was killed by {name}"
    return "crashed", f"the VMM exited with code {code}"


def reconcile(state_dir: Path, record: VMRecord) -> VMRecord:
    """The record, brought up to date (and saved when it changed and the lock is free)."""
    if record.state not in LIVE_STATES or vmm_alive(record):
        return record
    with records.locked(state_dir, record.name, wait=False) as mine:
        if not mine:  # another command works on it (e.g. a create still booting): trust its record
            return record
        return settle(state_dir, records.load(state_dir, record.name))


def settle(state_dir: Path, record: VMRecord) -> VMRecord:
    """reconcile() for a caller that holds the VM's lock."""
    if record.state not in LIVE_STATES or vmm_alive(record):
        return record
    record.state, record.reason = classify_exit(record, records.vm_dir(state_dir, record.name))
    record.vmm_pid, record.vmm_start = 0, None
    records.save(state_dir, record)
    return record


def problems(record: VMRecord, state_dir: Path) -> list[str]:
    """Why the VM cannot start: its disk or an artifact its disk depends on is gone."""
    found = []
    d = records.vm_dir(state_dir, record.name)
    if not (d / record.disk).exists():
        found.append(f"its disk {d / record.disk} is missing")
    store = Store(Path(record.cache))
    for what in ("rootfs", "kernel", "initrd", "vmlinux"):
        digest = record.artifacts.get(what)
        if digest and not store.path(digest).exists():
            found.append(f"its {what} ({digest[:19]}) is gone from the cache {record.cache}")
    return found


def display_state(record: VMRecord, state_dir: Path) -> tuple[str, str]:
    """(state, reason) to show: `broken` when the VM cannot start any more."""
    if record.state not in LIVE_STATES:
        if found := problems(record, state_dir):
            return "broken", "; ".join(found) + f"; `banger vm rm {record.name}` removes it"
    return record.state, record.reason


def console_tail(state_dir: Path, record: VMRecord, n: int = 20) -> list[str]:
    return tail_lines(records.vm_dir(state_dir, record.name) / "console.log", n)


def row(record: VMRecord, state_dir: Path, ssh: str = "") -> dict:
    """One VM as `vm list` shows it (and --json prints it); `ssh`: the command that reaches it."""
    state, reason = display_state(record, state_dir)
    address = record.address if record.net == "bridge" else (
        f"127.0.0.1:{record.ssh_port}" if record.ssh_port else "")
    return {"name": record.name, "image": record.image or record.artifacts.get("rootfs", "")[:19],
            "state": state, "reason": reason, "address": address, "vcpus": record.vcpus,
            "memory_mib": record.memory_mib, "created": record.created, "ssh": ssh or f"ssh {record.name}.vm"}


def console_stream(state_dir: Path, record: VMRecord, follow: bool = False, tail: int | None = None) -> Iterator[bytes]:
    """The console log (all boots), or its last `tail` lines; with `follow`, until the VM stops."""
    path = records.vm_dir(state_dir, record.name) / "console.log"
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return  # never booted
    with f:
        if tail is not None:
            lines = tail_lines(path, tail)
            if lines:
                yield ("\n".join(lines) + "\n").encode()
            f.seek(0, 2)
        while True:
            chunk = f.read(65536)
            if chunk:
                yield chunk
                continue
            if not follow or not vmm_alive(record):
                return
            time.sleep(0.2)
