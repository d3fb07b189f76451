"""Start a new VM from a snapshot instead of booting it (the snapshot step, steps/snapshot.py):
the VMM loads the saved machine (paused), the VM's disk is its own (QEMU: a qcow2 overlay on
the snapshot's frozen disk layer; Firecracker: a copy of the snapshot's disk), and over the
guest's resume channel (resume.sh) the host sends this VM's identity, a new sshd host key it
made (and pins), fresh entropy and the clock. Then, as after a boot, an SSH login proves the
key, `NAME.vm` is published and the VM is detached. What differs per backend is the VM
classes' (save_machine, wait_loaded, resume_guest, send_resume) and _saved_state's below.

Anything that goes wrong before the guest runs again (a corrupt or truncated memory file, a
QEMU that cannot load it) or before it announces itself raises SnapshotUnusable: the caller
drops the snapshot and boots the VM cold.
"""
from __future__ import annotations

import importlib
import os
import shlex
import threading
import time
from pathlib import Path
from typing import Callable

from banger.core.config import Dirs, load_config
from banger.core.store import ActionRecord, Store
from banger.hypervisor.backends import create as create_vm
from banger.hypervisor.choice import choose
from banger.hypervisor.vm import VMConfig, VMError
from banger.rootfs import guest_assets
from banger.rootfs.sshkey import ensure_key, new_host_key
from banger.steps.boot import READY_PATTERN
from banger.steps.snapshot import decompress_sparse
from banger.vm import access, launch, records
from banger.vm.records import VMRecord

LOAD_TIMEOUT = 60.0  # seconds for QEMU to load the saved state
READY_TIMEOUT = 120.0  # seconds from `cont` to the guest's readiness line and an SSH login


class SnapshotUnusable(RuntimeError):
    """This snapshot cannot start this VM; the message is one line. Boot cold instead."""


def restore(dirs: Dirs, record: VMRecord, snap: ActionRecord, log: Callable[[str], None] = lambda m: None) -> VMRecord:
    """Start the VM (the caller holds its lock; its disk was made from the snapshot's disk layer)
    from `snap`; returns the record, saved as running."""
    vm_dir = records.vm_dir(dirs.state, record.name)
    store = Store(Path(record.cache))
    memory = snap.outputs["memory"]
    choice = choose(snap.params["backend"])
    # the memory file is hashed in full before the guest runs: QEMU's is while QEMU loads it
    # (the guest stays paused until then), Firecracker's before it is decompressed
    verified_early = choice.backend != "qemu"
    if (verified_early and not store.verify(memory, full=True)) or not all(
            store.verify(snap.outputs[k]) for k in snap.outputs if k != "memory"):
        raise SnapshotUnusable("the snapshot's files are damaged or gone")
    paths = {k: store.path(v) for k, v in snap.inputs.items()}
    key = ensure_key(dirs.state)
    settings = load_config(dirs)
    saved = _saved_state(choice.backend, store, snap, vm_dir)
    try:  # with the bridge, the saved NIC takes this VM's MAC and address (resume.sh)
        tap = launch.bridge_nic(dirs, settings, record)
    except BaseException:
        if "restore_memory" in saved:
            saved["restore_memory"].unlink(missing_ok=True)
        raise
    config = VMConfig(kernel=paths["kernel"], initrd=paths.get("initrd"), vmlinux=paths.get("vmlinux"),
                      disk=vm_dir / record.disk, run_dir=vm_dir, memory_mib=snap.params["memory_mib"],
                      vcpus=snap.params["vcpus"], cmdline=snap.params["cmdline"], kept=vm_dir / "exit.json",
                      ssh_port=record.ssh_port or None, tap=tap, control_socket=vm_dir / "qmp.sock",
                      resume_socket=vm_dir / "resume.sock", resume_fifo=vm_dir / "console.in", portable_disk=True,
                      **saved)
    # the SSH client's import (a sixth of a second) is done while QEMU loads the state
    threading.Thread(target=importlib.import_module, args=("paramiko",), daemon=True).start()
    vm = create_vm(choice, config)
    launch.mark_starting(dirs, record, choice, log, f"restoring from snapshot {snap.key[:12]}")
    start = time.monotonic()
    resumed = False
    channel = None
    try:
        vm.start()
        if config.restore_memory is not None:  # Firecracker mapped it (private): the file can go
            config.restore_memory.unlink(missing_ok=True)
        launch.mark_spawned(dirs, record, vm)
        if not verified_early and not store.verify(memory, full=True):
            raise SnapshotUnusable("the snapshot's memory file is damaged")
        try:
            vm.wait_loaded(LOAD_TIMEOUT)
        except VMError as exc:
            raise SnapshotUnusable(str(exc)) from None
        timings = {"loaded": time.monotonic() - start}
        grow = record.disk_size > store.path(snap.inputs["rootfs"]).stat().st_size
        private, public = new_host_key()
        message = guest_assets.resume_message(record.name, record.id, key.public_line, private, public,
                                              clock=time.time(), seed=os.urandom(32),
                                              grow_to_sectors=record.disk_size // 512 if grow else None,
                                              network=tap.network if tap else None, mac=tap.mac if tap else None)
        if vm.resume_channel_buffers:
            channel = vm.send_resume(message)
        vm.resume_guest(record.disk_size if grow else None)
        resumed = True
        if channel is None:
            channel = vm.send_resume(message)
        # the guest announces its key as soon as sshd can use it (the rest of its identity comes
        # after): the login runs while it finishes, then its readiness line must follow
        wanted = " ".join(public.split()[:2])
        announced = vm.wait_for_console_line(guest_assets.HOSTKEY_LINE, timeout=READY_TIMEOUT,
                                             what="BANGER_HOSTKEY (the restored guest's key line)")
        timings["key_announced"] = time.monotonic() - start
        boot_id, key_type, key_data = guest_assets.HOSTKEY_LINE.search(announced).groups()
        if f"{key_type} {key_data}" != wanted:
            raise vm.failure("the restored guest did not announce the host key banger sent it")
        if launch.served_key(vm, key.private_path, time.monotonic() + READY_TIMEOUT) != wanted:
            raise vm.failure("the restored VM's sshd presented another host key than the one banger sent it")
        timings["ssh_ready"] = time.monotonic() - start
        seen: list[str] = [announced]
        ready = vm.wait_for_console_line(READY_PATTERN, timeout=READY_TIMEOUT, seen=seen,
                                         what="BANGER_READY (the restored guest's readiness line)")
        timings["guest_ready"] = time.monotonic() - start
        words = ready.split()
        if words[1:2] != [boot_id] or guest_assets.parse_hostkey_lines(seen, boot_id) != [wanted]:
            raise vm.failure("the restored guest's readiness line does not follow its key line")
        record.host_key = wanted
        access.publish(dirs, settings, record)
        vm.detach()
    except BaseException as exc:
        launch.mark_failed(dirs, settings, record, vm, tap, exc, "restoring")
        if config.restore_memory is not None:
            config.restore_memory.unlink(missing_ok=True)
        if isinstance(exc, (VMError, OSError)) and not isinstance(exc, KeyboardInterrupt):
            stage = "after it resumed" if resumed else "before it ran"
            raise SnapshotUnusable(f"the VM failed {stage}: {str(exc).splitlines()[0]}") from None
        raise
    finally:
        if channel is not None:
            channel.close()
    record.snapshot = snap.key
    record.extra["restore_seconds"] = {k: round(v, 2) for k, v in timings.items()}
    launch.mark_running(dirs, record)
    log(f"{record.name}: ready in {time.monotonic() - start:.1f} s (restored)")
    return record


def _saved_state(backend: str, store: Store, snap: ActionRecord, vm_dir: Path) -> dict:
    """The VMConfig fields that start this backend's VM from the snapshot's saved state: QEMU
    reads the compressed stream itself; Firecracker maps a raw memory file (uncompressed here,
    sparse; restore removes it once loaded) and reads its state file."""
    memory = store.path(snap.outputs["memory"])
    if backend == "firecracker":
        raw = vm_dir / "memory.bin"
        try:
            decompress_sparse(memory, raw)
        except Exception as exc:  # zstd's errors and a full disk alike: this snapshot cannot start this VM
            raw.unlink(missing_ok=True)
            raise SnapshotUnusable(f"its memory file did not decompress: {str(exc).splitlines()[0]}") from None
        return {"restore_state": store.path(snap.outputs["vmstate"]), "restore_memory": raw}
    return {"incoming": f"exec:zstd -dcq -- {shlex.quote(str(memory))}"}
