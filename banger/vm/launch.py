"""Boot a kept VM: start its VMM under the keeper, wait for the guest agent's readiness line,
pin the host key the agent printed on the console, log in once over SSH to prove the key and
the login, publish `NAME.vm` in the ssh config, then detach so the VM outlives banger.

Until the detach, the VM is this process's: an error, Ctrl-C or SIGTERM stops it (and a SIGKILL
of this process makes the keeper kill it), and the record then says stopped or crashed, never
running.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from banger.core.config import Dirs
from banger.core.store import Store
from banger.core import pins, procs
from banger.hypervisor.backends import create as create_vm
from banger.hypervisor.choice import choose
from banger.hypervisor.vm import GuestNetwork, TapNIC, VMConfig
from banger.rootfs import guest_assets
from banger.rootfs.sshkey import ensure_key
from banger.steps.boot import READY_PATTERN, guest_cmdline, ssh_login
from banger.vm import access, network, records
from banger.vm.records import VMRecord

BOOT_TIMEOUT = 300.0  # seconds from start to SSH login (TCG is slow)


def kernel_cmdline(record: VMRecord, settings: dict, public_key: str) -> str:
    extra = str((settings.get("boot") or {}).get("cmdline", ""))
    identity = guest_assets.identity_cmdline(record.name, record.id, record.grow, ssh_key=public_key)
    return guest_cmdline(f"{identity} {extra}".strip())  # the boot check's words, then the VM's


def boot(dirs: Dirs, settings: dict, record: VMRecord, log: Callable[[str], None] = lambda m: None,
         timeout: float | None = None) -> VMRecord:
    """Start the VM (the caller holds its lock); returns the record, saved as running."""
    timeout = timeout or float((settings.get("boot") or {}).get("timeout", BOOT_TIMEOUT))
    vm_dir = records.vm_dir(dirs.state, record.name)
    store = Store(Path(record.cache))
    # (again: a pin file that was lost or damaged is whole again once the VM runs)
    pins.pin(store.root, f"vm-{record.name}", list(record.artifacts.values()), vm_dir / "vm.json")
    paths = {k: store.path(v) for k, v in record.artifacts.items()}
    choice = choose(record.backend)
    key = ensure_key(dirs.state)
    tap = bridge_nic(dirs, settings, record)
    config = VMConfig(kernel=paths["kernel"], initrd=paths.get("initrd"), vmlinux=paths.get("vmlinux"),
                      disk=vm_dir / record.disk, run_dir=vm_dir, memory_mib=record.memory_mib, vcpus=record.vcpus,
                      cmdline=kernel_cmdline(record, settings, key.public_line), kept=vm_dir / "exit.json",
                      ssh_port=record.ssh_port or None, tap=tap,
                      control_socket=vm_dir / "qmp.sock" if choice.backend == "qemu" else None)
    vm = create_vm(choice, config)
    mark_starting(dirs, record, choice, log, "booting")
    start = time.monotonic()
    try:
        vm.start()
        mark_spawned(dirs, record, vm)
        seen: list[str] = []
        ready = vm.wait_for_console_line(READY_PATTERN, timeout=timeout, seen=seen,
                                         what="BANGER_READY (the guest agent's readiness line)")
        words = ready.split()
        offered = guest_assets.parse_hostkey_lines(seen, words[1] if len(words) > 1 else None)
        served_line = served_key(vm, key.private_path, start + timeout)
        if offered and served_line not in offered:
            raise vm.failure(f"the VM's sshd presented a host key its console did not announce "
                             f"({served_line[:40]}...); refusing to trust it")
        if not offered:
            log(f"{record.name}: the guest printed no host key (an image built by an older banger?); "
                f"trusting the key its sshd presented on first use")
        record.host_key = served_line
        access.publish(dirs, settings, record)
        vm.detach()
    except BaseException as exc:
        mark_failed(dirs, settings, record, vm, tap, exc, "starting")
        raise
    mark_running(dirs, record)
    log(f"{record.name}: ready in {time.monotonic() - start:.1f} s")
    return record


# ---- what a boot (here) and a restore (restore.py) share ------------------------------------
def bridge_nic(dirs: Dirs, settings: dict, record: VMRecord) -> TapNIC | None:
    """The VM's tap and address when it uses the bridge (its lease), else None."""
    if record.net != "bridge":
        return None
    lease = network.attach(dirs, settings, record.name)
    return TapNIC(lease.tap, lease.mac, GuestNetwork(lease.address, lease.gateway, lease.dns))


def mark_starting(dirs: Dirs, record: VMRecord, choice, log: Callable[[str], None], how: str) -> None:
    record.state, record.reason, record.stop_requested = "starting", "", False
    record.accel, record.machine = choice.accel, choice.machine
    records.save(dirs.state, record)
    log(f"{record.name}: {how} ({choice.backend}/{choice.accel}/{choice.machine}, {record.vcpus} vCPU, "
        f"{record.memory_mib} MiB)")


def mark_spawned(dirs: Dirs, record: VMRecord, vm) -> None:
    """The VMM runs: its pid and start time, where the boot's console starts, its address."""
    record.vmm_pid = vm.vmm_pid or 0
    record.vmm_start = procs.start_time(record.vmm_pid)
    record.console_offset = vm._console_offset
    record.address, record.ssh_port = vm.ssh_address
    records.save(dirs.state, record)


def served_key(vm, private_key: Path, deadline: float) -> str:
    """Log in over SSH with banger's key (the proof that the VM is ready): the host key its
    sshd presented, "TYPE BASE64"."""
    client = ssh_login(vm, private_key, deadline)
    try:
        served = client.get_transport().get_remote_server_key()
        return f"{served.get_name()} {served.get_base64()}"
    finally:
        client.close()


def mark_failed(dirs: Dirs, settings: dict, record: VMRecord, vm, tap: TapNIC | None, exc: BaseException,
                doing: str) -> None:
    """Not detached: the VMM and its keeper go, the tap too; the record says why."""
    vm.stop()
    if tap is not None:
        network.release(dirs, settings, record.name)
    record.vmm_pid, record.vmm_start = 0, None
    interrupted = isinstance(exc, KeyboardInterrupt)
    record.state = "stopped" if interrupted else "crashed"
    record.reason = f"interrupted while {doing}" if interrupted else str(exc).splitlines()[0]
    records.save(dirs.state, record)


def mark_running(dirs: Dirs, record: VMRecord) -> None:
    record.state, record.grow = "running", False
    record.boots += 1
    record.started_at = time.time()
    records.save(dirs.state, record)
