"""What `banger vm` does: create, start, stop, restart, rm, prune, list.

Every command reconciles the records it reads with the processes that really run (status.py);
commands on one VM serialize on its lock. A VM's disk pins the cached artifacts it depends on
(banger.core.pins), so `banger cache gc` keeps them while the VM exists.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from banger.core import images, pins
from banger.core.config import Dirs, load_config
from banger.core.fsutil import remove_tree
from banger.core.store import Store
from banger.hypervisor.choice import HypervisorError, choose
from banger.hypervisor.vm import VMError
from banger.rootfs.sshkey import ensure_key
from banger.vm import access, auth, control, disks, launch, network, records, status
from banger.vm.records import LIVE_STATES, VMRecord, VMStateError

DEFAULT_IMAGE = "debian-bookworm"  # what `banger demo` builds
STOP_TIMEOUT = 60.0
Log = Callable[[str], None]


@dataclass(frozen=True)
class CreateOptions:
    image: tuple[str, ...] = ()  # an image name, or build words (image=REF ...)
    name: str | None = None
    vcpus: int = 2
    memory: str = "2G"
    disk_size: str | None = None
    net: str = "user"
    hypervisor: str = "auto"
    start: bool = True
    auth_sync: bool = True  # copy the host's agent auth files in (auth.py)
    cold: bool = False  # boot, instead of restoring from the image's snapshot (made on first use)


def resolve_image(dirs: Dirs, settings: dict, words: tuple[str, ...], log: Log) -> images.ImageRecord:
    store = Store(dirs.cache, dirs.trees)
    if len(words) == 1 and "=" not in words[0]:
        return images.load(store, words[0])
    if not words:
        default = settings.get("default_image") or DEFAULT_IMAGE
        try:
            return images.load(store, default)
        except images.DamagedImage:
            raise  # its own line names the fix
        except images.ImageError:
            raise VMStateError(f"no image given and no image named {default!r}; name one "
                               f"(`banger image list`), pass build words (`banger vm create image=REF`), "
                               f"or run `banger demo` first") from None
    from banger.app.build import run_build
    from banger.engine.spec import parse_words

    spec = parse_words(list(words), command="banger vm create")
    if not any(w.startswith("boot=") for w in words):  # the VM's own boot is the check
        spec = replace(spec, boot=False)
    return run_build(spec, dirs, log=log)


def _choose_backend(hypervisor: str, net: str) -> str:
    if hypervisor == "firecracker" and net != "bridge":
        raise VMStateError("Firecracker has no user-mode networking: use --net bridge (root) with "
                           "--hypervisor firecracker, or --hypervisor qemu")
    try:  # user-mode networking is QEMU's: auto then means QEMU (KVM when it works)
        return choose("qemu" if (net == "user" and hypervisor == "auto") else hypervisor).backend
    except HypervisorError as exc:
        raise VMStateError(str(exc)) from None


def create(dirs: Dirs, opts: CreateOptions, log: Log = lambda m: None) -> VMRecord:
    settings = load_config(dirs)
    network.check_mode(opts.net)
    memory_mib = disks.parse_size(opts.memory, "--memory", "--memory 2G") // 2**20
    if memory_mib < 128 or opts.vcpus < 1:
        raise VMStateError("a VM needs at least --memory 128M and --vcpus 1")
    if opts.name is not None:
        records.check_name(opts.name)
    backend = _choose_backend(opts.hypervisor, opts.net)
    image = resolve_image(dirs, settings, opts.image, log)
    store = Store(dirs.cache, dirs.trees)
    artifacts = {k: image.artifacts[k] for k in ("rootfs", "kernel", "initrd", "vmlinux") if k in image.artifacts}
    if "kernel" not in artifacts or "rootfs" not in artifacts:
        raise VMStateError(f"image {image.name!r} has no staged kernel; rebuild it with `banger build image={image.ref}`")
    missing = [k for k, d in artifacts.items() if not store.path(d).exists()]
    if missing:
        raise VMStateError(f"image {image.name!r} lost its {', '.join(missing)} from the cache; "
                           f"rebuild it with `banger build image={image.ref}`")
    base = store.path(artifacts["rootfs"])
    size = disks.parse_size(opts.disk_size, "--disk-size", "--disk-size 8G") if opts.disk_size else base.stat().st_size
    name = records.reserve(dirs.state, opts.name)
    vm_dir = records.vm_dir(dirs.state, name)
    record = VMRecord(name=name, id=records.new_id(), image=image.name, image_ref=image.ref, artifacts=artifacts,
                      cache=str(store.root), backend=backend, vcpus=opts.vcpus, memory_mib=memory_mib,
                      disk_size=size, disk=disks.disk_name(backend), net=opts.net, created=time.time(),
                      grow=size > base.stat().st_size)
    try:
        with records.locked(dirs.state, name):
            pins.pin(store.root, f"vm-{name}", list(artifacts.values()), vm_dir / "vm.json")
            snap = _snapshot_for(dirs, record, log) if opts.start and not opts.cold else None
            if snap is not None:
                record.artifacts["snapshot-disk"] = snap.outputs["disk"]
                pins.pin(store.root, f"vm-{name}", list(record.artifacts.values()), vm_dir / "vm.json")
                disks.create(backend, store.path(snap.outputs["disk"]), vm_dir / record.disk, size,
                             base_format="qcow2", base_size=base.stat().st_size)
            else:
                disks.create(backend, base, vm_dir / record.disk, size)
            records.save(dirs.state, record)  # from here on it is a VM (list shows it)
            if opts.start:
                ensure_key(dirs.state)
                try:
                    record = _first_start(dirs, settings, record, snap, base, log)
                except VMError as exc:
                    raise VMError(f"{exc}\n{name} was kept ({record.state}): `banger vm logs {name}` shows its "
                                  f"console, `banger vm start {name}` tries again, `banger vm rm {name}` "
                                  f"removes it") from None
                _sync_auth(dirs, record, opts.auth_sync, log)
            return record
    except BaseException:
        if not (vm_dir / "vm.json").exists():  # nothing half-made stays behind
            pins.unpin(store.root, f"vm-{name}")
            remove_tree(vm_dir)
        raise


def _snapshot_for(dirs: Dirs, record: VMRecord, log: Log):
    """The snapshot to restore this new VM from (made now on first use), or None: boot cold."""
    if record.backend not in ("qemu", "firecracker"):
        log(f"{record.name}: booting (restoring from a snapshot needs QEMU or Firecracker)")
        return None
    if shutil.which("zstd") is None:  # the saved memory is zstd-compressed
        log(f"warning: `zstd` is not installed, so {record.name} boots instead of restoring from a snapshot; "
            f"install the zstd package")
        return None
    from banger.app import snapshot
    from banger.core.errors import BuildError

    try:
        choice = choose(record.backend)
        # QEMU's snapshot VM always has user-mode networking, Firecracker's a tap of its own; a
        # bridge VM restored from it takes its own MAC and address as it resumes (resume.sh), so
        # both network modes share one QEMU snapshot (Firecracker VMs are all bridge VMs)
        net = "user" if choice.backend == "qemu" else "tap"
        shape = snapshot.Shape(choice.backend, choice.accel, choice.machine, record.vcpus, record.memory_mib, net)
        snap, _ = snapshot.ensure(dirs, record.artifacts, shape, log)
    except snapshot.Damaged as exc:
        log(f"warning: {exc}; dropped it, booting {record.name} cold")
        return None
    except (BuildError, HypervisorError) as exc:
        log(f"warning: no snapshot to restore {record.name} from ({str(exc).splitlines()[0]}); booting it cold")
        return None
    return snap


def _first_start(dirs: Dirs, settings: dict, record: VMRecord, snap, base: Path, log: Log) -> VMRecord:
    """Restore the new VM from `snap`; a snapshot that fails is dropped and the VM boots cold."""
    if snap is None:
        return launch.boot(dirs, settings, record, log)
    from banger.app import snapshot
    from banger.vm.restore import SnapshotUnusable, restore

    try:
        return restore(dirs, record, snap, log)
    except SnapshotUnusable as exc:
        log(f"warning: snapshot {snap.key[:12]} did not restore ({exc}); dropped it, booting {record.name} cold")
    snapshot.drop(dirs, snap)
    vm_dir = records.vm_dir(dirs.state, record.name)
    del record.artifacts["snapshot-disk"]
    disks.create(record.backend, base, vm_dir / record.disk, record.disk_size)
    record.grow = record.disk_size > base.stat().st_size
    record.state, record.reason = "created", ""
    records.save(dirs.state, record)
    pins.pin(Path(record.cache), f"vm-{record.name}", list(record.artifacts.values()), vm_dir / "vm.json")
    return launch.boot(dirs, settings, record, log)


def get(dirs: Dirs, name: str, locked: bool = False) -> VMRecord:
    """The VM's record, reconciled (`locked`: the caller holds the VM's lock)."""
    record = records.load(dirs.state, name)
    record = status.settle(dirs.state, record) if locked else status.reconcile(dirs.state, record)
    if record.net == "bridge" and record.state not in LIVE_STATES:
        with contextlib.suppress(Exception):  # a start that was killed left its tap
            network.release(dirs, load_config(dirs), name)
    return record


def all_vms(dirs: Dirs) -> list[VMRecord]:
    out = []
    for name in records.names(dirs.state):
        with contextlib.suppress(VMStateError):
            out.append(get(dirs, name))
    return out


def _sync_auth(dirs: Dirs, record: VMRecord, enabled: bool, log: Log) -> None:
    """After a boot: the host user's agent auth files into the VM (warnings only, never fails)."""
    if enabled and record.state == "running":
        synced = auth.sync(dirs, record, Path.home(), log)
        if synced:
            log(f"{record.name}: synced agent auth: {', '.join('~/' + p for p in synced)}")


def start(dirs: Dirs, name: str, log: Log = lambda m: None, auth_sync: bool = True) -> VMRecord:
    with records.locked(dirs.state, name):
        record = get(dirs, name, locked=True)
        if record.state in LIVE_STATES:
            raise VMStateError(f"{name} is {record.state} already; `banger vm restart {name}` restarts it")
        if found := status.problems(record, dirs.state):
            raise VMStateError(f"{name} cannot start: {'; '.join(found)}; `banger vm rm {name}` removes it")
        record = launch.boot(dirs, load_config(dirs), record, log)
        _sync_auth(dirs, record, auth_sync, log)
        return record


def stop(dirs: Dirs, name: str, force: bool = False, timeout: float = STOP_TIMEOUT,
         log: Log = lambda m: None) -> VMRecord:
    with records.locked(dirs.state, name):
        return _stop_locked(dirs, get(dirs, name, locked=True), force, timeout, log)


def _stop_locked(dirs: Dirs, record: VMRecord, force: bool, timeout: float, log: Log) -> VMRecord:
    if record.state not in LIVE_STATES:
        return record
    vm_dir = records.vm_dir(dirs.state, record.name)
    record.stop_requested, record.state = True, "stopping"
    records.save(dirs.state, record)
    clean = False
    if not force:
        clean = control.power_off(vm_dir, record, ensure_key(dirs.state).private_path, timeout)
        if not clean:
            log(f"{record.name}: did not power off within {timeout:g} s; stopping it by force")
    if not clean:
        control.kill(vm_dir, record)
    control.wait_exit_file(vm_dir)
    record = status.settle(dirs.state, record)
    if not clean:
        record.reason = "stopped by banger (forced)"
        records.save(dirs.state, record)
    if record.net == "bridge":
        network.release(dirs, load_config(dirs), record.name)
    return record


def restart(dirs: Dirs, name: str, force: bool = False, log: Log = lambda m: None,
            auth_sync: bool = True) -> VMRecord:
    with records.locked(dirs.state, name):
        record = _stop_locked(dirs, get(dirs, name, locked=True), force, STOP_TIMEOUT, log)
        record = launch.boot(dirs, load_config(dirs), record, log)
        _sync_auth(dirs, record, auth_sync, log)
        return record


def remove(dirs: Dirs, name: str, force: bool = False, log: Log = lambda m: None) -> None:
    settings = load_config(dirs)
    vm_dir = records.vm_dir(dirs.state, name)
    if not vm_dir.is_dir():
        raise VMStateError(f"no VM named {name!r}; `banger vm list --all` shows them")
    with records.locked(dirs.state, name):
        try:
            record = get(dirs, name, locked=True)
        except VMStateError:
            if not force:
                raise
            record = None  # an unreadable record: --force removes what is there
        if record is not None and record.state in LIVE_STATES:
            if not force:
                raise VMStateError(f"{name} is {record.state}; `banger vm stop {name}` first, or "
                                   f"`banger vm rm --force {name}`")
            _stop_locked(dirs, record, True, 0, log)
        # retire the directory first (atomic): a crash below leaves no half VM that claims to be one
        trash = vm_dir.with_name(f".removing-{name}-{os.getpid()}")
        os.rename(vm_dir, trash)
    access.withdraw(dirs, settings, name)
    if record is None or record.net == "bridge":
        with contextlib.suppress(Exception):
            network.forget(dirs, settings, name)
    pins.unpin(Path(record.cache) if record else dirs.cache, f"vm-{name}")
    shutil.rmtree(trash, ignore_errors=True)


def prune(dirs: Dirs, log: Log = lambda m: None) -> list[str]:
    """Remove every VM that is not running (stopped, crashed, created, broken)."""
    removed = []
    for record in all_vms(dirs):
        if record.state not in LIVE_STATES:
            with contextlib.suppress(VMStateError):
                remove(dirs, record.name, log=log)
                removed.append(record.name)
    for name in records.stale_names(dirs.state):  # a create killed before it wrote its record
        if records.remove_if_stale(dirs.state, name):
            removed.append(name)
    for stale in records.vms_dir(dirs.state).glob(".removing-*"):  # an rm that was killed
        shutil.rmtree(stale, ignore_errors=True)
    return removed
