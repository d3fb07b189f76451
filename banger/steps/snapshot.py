"""Step 8 (on demand), snapshot: boot the finished image once with a given machine shape, let
its boot finish, quiesce it and save the whole machine, so that `banger vm create` restores VMs
from it in ~2 s under TCG here instead of booting each (vm/restore.py).

The guest side is resume.sh (guest_assets): on a boot with banger.snapshot=1 the agent waits for
the end of the boot, syncs, prints BANGER_SNAPSHOT_READY and waits on its resume channel; the
host then stops the VM and saves it (VM.save_machine: QEMU's migration to a file, Firecracker's
full snapshot). Nothing secret is made for a VM before that point that a restored VM keeps: each
gets its identity, a new host key, fresh entropy and the clock over that channel (QEMU: a second
serial port; Firecracker: its one serial port's input, banger.resume_channel=/dev/ttyS0).

Key: the rootfs, kernel, initrd and vmlinux digests; the machine shape (backend, accel, machine,
vCPUs, memory, network mode); the kernel command line; the VMM's version (a saved state loads
only into the QEMU or Firecracker that wrote it). Editing a guest template changes the rootfs,
hence the snapshot.
Outputs:
  memory  QEMU: the migration stream (RAM without its zero pages, CPU and device state);
          Firecracker: the guest memory file. zstd-compressed either way.
  disk    QEMU: the snapshot VM's qcow2 overlay, frozen: every restored VM gets its own overlay
          on it; its backing file is named relative to itself (the rootfs's blob in the same
          store), so a copied or moved cache keeps working. Firecracker: the snapshot VM's raw
          disk, which every restored VM copies (named `disk.raw`, relative to its run dir, in
          the saved state: the restored VM's disk has that name in its own dir).
  vmstate Firecracker only: the microVM state (CPU and devices).
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from banger.core import config, digest as dg, procs
from banger.core.errors import BuildError
from banger.engine import tasks as engine
from banger.engine.spec import BuildSpec

VERSION = "1"
NAME = "snapshot"
SNAPSHOT_HOST = "banger-snapshot"  # the snapshot boot's host name; each restored VM gets its own
SNAPSHOT_ID = "b5a9e1c0d2f34e6a8b7c9d0e1f2a3b4c"  # its machine id (likewise replaced)
DISK_DEVICE = "rootfs"  # QEMU's drive id (hypervisor.qemu): what a restore's block_resize names
SAVE_TIMEOUT = 300.0
# the snapshot boot's quiesce line, or the plain readiness line of an image whose agent predates
# snapshots (which then never quiesces)
READY_PATTERN = r"^\s*BANGER_(SNAPSHOT_)?READY\b"
ZSTD_LEVEL = 3
DEFAULT_VCPUS = 2  # `banger vm create`'s defaults: what `banger build … snapshot=yes` pre-warms
DEFAULT_MEMORY_MIB = 2048


@dataclass(frozen=True)
class Shape:
    """The machine a snapshot holds; a VM restores from it only with the very same shape."""
    backend: str
    accel: str
    machine: str
    vcpus: int = DEFAULT_VCPUS
    memory_mib: int = DEFAULT_MEMORY_MIB
    net: str = "user"  # the snapshot VM's (QEMU: user-mode; Firecracker: "tap", its own); bridge VMs reconfigure

    def params(self) -> dict:
        return asdict(self)


# no login prompt on the serial console of a snapshot's VMs: nobody can type there (banger's
# console is a log file), and a prompt printed just before the save would reach every restored
# VM's console log afterwards, naming the snapshot's host. (On Firecracker, whose one serial port
# is also the resume channel, a getty would moreover read the host's message.)
NO_GETTY = "systemd.mask=serial-getty@ttyS0.service"
# Firecracker has one serial port: the channel is its input (the VM's stdin, a FIFO on the host)
FIRECRACKER_CHANNEL = "banger.resume_channel=/dev/ttyS0"


def snapshot_cmdline(user: str = "", backend: str = "qemu") -> str:
    """The words after the backend's (console, root, network): a fixed identity resume.sh
    replaces, the snapshot mode, no serial getty (Firecracker: and its channel), then the boot
    step's and the user's (config boot.cmdline)."""
    from banger.rootfs import guest_assets
    from banger.steps.boot import guest_cmdline

    identity = guest_assets.identity_cmdline(SNAPSHOT_HOST, SNAPSHOT_ID, False)
    mode = f"{guest_assets.SNAPSHOT_WORD} {NO_GETTY}" + (f" {FIRECRACKER_CHANNEL}" if backend == "firecracker" else "")
    return guest_cmdline(f"{identity} {mode} {user}".strip())


OLD_IMAGE = ("the image's guest agent cannot be snapshotted (an image built by an older banger); rebuild it "
             "with `banger build`")


def has_resume_agent(rootfs: Path) -> bool:
    """Does the image hold resume.sh? (An image built before snapshots would boot and never
    quiesce: better to know from its file system, in milliseconds.)"""
    from banger.rootfs import debugfs
    from banger.rootfs.guest_assets import SCRIPTS_DIR

    try:
        blocks = debugfs.run(rootfs, [f"stat {debugfs.quote(f'{SCRIPTS_DIR}/resume.sh')}"])
    except debugfs.DebugfsError as exc:
        raise BuildError(f"cannot read the image's file system: {exc}") from None
    return not any("File not found" in line for line in blocks[0].output)


@functools.cache  # as e2fs.version: the key is computed several times per run (lookup, doit, execute)
def vmm_version(binary: str, what: str) -> str:
    proc = subprocess.run([binary, "--version"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          preexec_fn=procs.dies_with_parent())
    if proc.returncode != 0 or not proc.stdout:
        raise BuildError(f"`{binary} --version` failed; reinstall {what}")
    return proc.stdout.splitlines()[0].strip()


def qemu_version(binary: str) -> str:
    return vmm_version(binary, "QEMU (the qemu-system-x86 package)")


def take(paths: dict[str, Path], shape: Shape, cmdline: str, stage: Path, dirs: config.Dirs,
         log: Callable[[str], None], timeout: float = SAVE_TIMEOUT) -> dict:
    """Boot, wait for the guest's quiesce line, save the machine: {memory: raw memory file,
    disk: the VM's disk (QEMU: a qcow2 overlay; Firecracker: a raw copy), vmstate: Firecracker's
    device state, seconds: timings}."""
    from banger.core import fsutil
    from banger.hypervisor import qemu_img
    from banger.hypervisor.backends import create
    from banger.hypervisor.choice import choose
    from banger.hypervisor.vm import VMConfig, new_run_dir

    if not has_resume_agent(paths["rootfs"]):
        raise BuildError(OLD_IMAGE)
    choice = choose(shape.backend)
    if (choice.backend, choice.accel, choice.machine) != (shape.backend, shape.accel, shape.machine):
        raise BuildError(f"this host runs {choice.backend}/{choice.accel}/{choice.machine}, not the snapshot's "
                         f"{shape.backend}/{shape.accel}/{shape.machine}")
    run_dir = new_run_dir(dirs.state)
    if choice.backend == "firecracker":  # named relative to its run dir: a restored VM's disk has its name
        disk = run_dir / "disk.raw"
        fsutil.copy_sparse(paths["rootfs"], disk)
    else:
        disk = stage / "disk.qcow2"
        qemu_img.create_overlay(paths["rootfs"], disk, paths["rootfs"].stat().st_size)
    vm = create(choice, VMConfig(kernel=paths["kernel"], initrd=paths.get("initrd"), vmlinux=paths.get("vmlinux"),
                                 disk=disk, run_dir=run_dir, memory_mib=shape.memory_mib, vcpus=shape.vcpus,
                                 cmdline=cmdline, control_socket=run_dir / "qmp.sock",
                                 resume_socket=run_dir / "resume.sock", resume_fifo=run_dir / "console.in",
                                 portable_disk=True))
    log(f"snapshot: booting the image once ({choice.backend}/{choice.accel}/{choice.machine}, {shape.vcpus} vCPU, "
        f"{shape.memory_mib} MiB) to save it after its boot")
    start = time.monotonic()
    try:
        with vm:
            line = vm.wait_for_console_line(READY_PATTERN, timeout=timeout,
                                            what="BANGER_SNAPSHOT_READY (the guest's quiesce line)")
            if "SNAPSHOT" not in line:
                raise BuildError(OLD_IMAGE)
            booted = time.monotonic()
            files = vm.save_machine(stage, timeout)
            saved = time.monotonic()
        if disk.parent != stage:  # Firecracker's, once it has exited
            shutil.move(disk, stage / disk.name)
            disk = stage / disk.name
    finally:
        if disk.parent != stage:  # the run dir keeps its logs, not a disk copy
            disk.unlink(missing_ok=True)
    return {**files, "disk": disk, "console_log": str(vm.console_log),
            "seconds": {"boot": round(booted - start, 2), "save": round(saved - booted, 2)}}


def compress(src: Path, dest: Path) -> str:
    """zstd-compress src into dest; the blake3 digest of dest, taken while writing it."""
    import zstandard

    h = dg.hasher("blake3")

    class Hashing:
        def __init__(self, f):
            self.f = f

        def write(self, data) -> int:
            h.update(data)
            return self.f.write(data)

    with open(src, "rb") as fin, open(dest, "wb") as fout:
        cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1, write_checksum=True)
        cctx.copy_stream(fin, Hashing(fout), size=src.stat().st_size)
    return f"blake3:{h.hexdigest()}"


def decompress_sparse(src: Path, dest: Path, chunk: int = 1 << 20) -> None:
    """Undo compress() into dest, leaving holes where the data is zero (most of a guest's memory)."""
    import zstandard

    zero = bytes(chunk)
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        reader = zstandard.ZstdDecompressor().stream_reader(fin)
        while data := reader.read(chunk):
            if data == zero[:len(data)]:
                fout.seek(len(data), os.SEEK_CUR)
            else:
                fout.write(data)
        fout.truncate()


# ---- doit wiring ----------------------------------------------------------------------------------
def snapshot_task(build: engine.Build, inputs: Callable[[], dict], shape: Shape, cmdline: str,
                  deps: tuple[str, ...] = ()) -> dict:
    """The snapshot step for the artifacts `inputs()` names (rootfs, kernel, initrd, vmlinux)."""
    dirs = build.context.get("dirs") or config.default_dirs(build.store.root)

    def tools() -> dict:
        from banger.hypervisor.choice import choose

        binary = choose(shape.backend).binary
        if shape.backend == "firecracker":  # a snapshot loads only into the Firecracker that wrote it
            return {"firecracker": vmm_version(binary, "Firecracker")}
        return {"qemu": qemu_version(binary)}

    def work(run: engine.StepRun) -> dict[str, str]:
        """Boot the image once, let its boot finish, save the whole machine."""
        from banger.hypervisor import qemu_img
        from banger.hypervisor.choice import HypervisorError
        from banger.hypervisor.vm import VMError

        paths = {name: run.path(digest) for name, digest in run.inputs.items()}
        try:
            taken = take(paths, shape, run.params["cmdline"], run.stage, dirs, build.log)
        except (VMError, HypervisorError, qemu_img.QemuImgError) as exc:
            raise BuildError(str(exc)) from None
        started = time.monotonic()
        packed = run.stage / "memory.zst"
        memory = run.store.ingest_file(packed, hashed=compress(taken["memory"], packed))
        raw_size = taken["memory"].stat().st_size
        taken["memory"].unlink()
        if shape.backend == "qemu":
            qemu_img.rebase_relative(taken["disk"], paths["rootfs"], run.store.root / "blobs" / "blake3")
        outputs = {"memory": memory, "disk": run.store.ingest_file(taken["disk"])}
        if "vmstate" in taken:
            outputs["vmstate"] = run.store.ingest_file(taken["vmstate"])
        run.info.update({"seconds": {**taken["seconds"], "store": round(time.monotonic() - started, 2)},
                         "memory_bytes": raw_size, "memory_stored_bytes": run.store.size_of(memory),
                         "disk_bytes": run.store.size_of(outputs["disk"]), "console_log": taken["console_log"]})
        return outputs

    params = {**shape.params(), "cmdline": cmdline}
    return engine.step_task(build, name=NAME, version=VERSION, work=work, inputs=inputs, params=params,
                            tools=tools, deps=deps, doc="boot the image once and save the whole machine")


def check(spec: BuildSpec) -> None:
    """Refuse snapshot=yes where it cannot be made, before any step runs (one line)."""
    from banger.hypervisor.choice import HypervisorError, choose

    if spec.hypervisor == "firecracker":
        raise BuildError("snapshot=yes saves QEMU machines (what `banger vm create` restores by default); "
                         "drop hypervisor=firecracker or snapshot=yes")
    try:
        choose("qemu")
    except HypervisorError as exc:
        raise BuildError(str(exc)) from None


def tasks(build: engine.Build, spec: BuildSpec, after: str = "stage-kernel") -> Iterator[dict]:
    """`banger build … snapshot=yes`: pre-warm the snapshot `banger vm create` uses by default."""
    from banger.hypervisor.choice import choose

    dirs = build.context.get("dirs") or config.default_dirs(build.store.root)
    settings = config.load_config(dirs)
    choice = choose("qemu")
    shape = Shape(choice.backend, choice.accel, choice.machine)
    user = str((settings.get("boot") or {}).get("cmdline", ""))

    def inputs() -> dict:
        staged = build.records["stage-kernel"].outputs
        return {name: staged[name] for name in ("rootfs", "kernel", "initrd", "vmlinux") if name in staged}

    yield snapshot_task(build, inputs, shape, snapshot_cmdline(user), deps=(after,))
