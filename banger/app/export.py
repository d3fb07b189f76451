"""`banger image export NAME DIR`: an image's boot files as the user's own copies.

The paths `banger image show` prints are the cache's blobs: booting one of those with a plain
QEMU would write into the cache. The export copies them out instead (a reflink where the
filesystem can, else a sparse copy: never a full write of zeros), so writing to the copies never
touches the cache, and adds the kernel command line banger boots them with under QEMU and a
small script that boots them so.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from banger.core import images
from banger.core.config import Dirs, load_config
from banger.core.fsutil import copy_sparse
from banger.core.progress import human_bytes
from banger.core.store import Store
from banger.engine.spec import BuildSpec
from banger.hypervisor import kvm
from banger.hypervisor.qemu import TCG_CPU, TCG_PC_CMDLINE, direct_boot_cmdline, has_pvh_entry
from banger.rootfs.sshkey import key_path
from banger.steps.boot import BootConfig, guest_cmdline

# artifact name in the image record -> file name in the export, in the order they are written
ARTIFACT_FILES = {"rootfs": "rootfs.ext4", "kernel": "bzImage", "vmlinux": "vmlinux", "initrd": "initrd.img"}
REQUIRED = ("rootfs", "kernel")
CMDLINE_FILE = "cmdline"
SCRIPT_FILE = "run-qemu.sh"
DEFAULT_SSH_PORT = 2222

# The guest writes to rootfs.ext4 itself (no snapshot=on as under banger: the file is a copy).
RUN_SCRIPT = """\
#!/bin/sh
# Boots the files `banger image export` wrote beside this script with QEMU, as banger does:
# KVM on -M microvm, or TCG (software emulation) on -M pc. The guest writes to rootfs.ext4 (a
# copy of the image, not banger's cache). Its sshd is forwarded to 127.0.0.1:PORT (the first
# argument, default {port}). Ctrl-a x quits QEMU.
set -eu
cd "$(dirname "$0")"
port="${{1:-{port}}}"
append="$(cat {cmdline_file})"
# ACCEL=kvm or ACCEL=tcg; the default is what banger's KVM probe found at export time:
# {kvm_reason}
accel="${{ACCEL:-{accel}}}"
if [ "$accel" = kvm ]; then
    machine=microvm; cpu=host; bus=device; kernel=bzImage
else
    machine=pc; cpu={tcg_cpu}; bus=pci; kernel={tcg_kernel}; append="$append{tcg_words}"
fi
exec qemu-system-x86_64 -machine "$machine,accel=$accel" -cpu "$cpu" -m {memory_mib} -smp {vcpus} \\
    -nodefaults -no-user-config -display none -no-reboot -serial mon:stdio \\
    -kernel "$kernel" -append "$append"{initrd} -device "virtio-rng-$bus" \\
    -drive file=rootfs.ext4,format=raw,if=none,id=rootfs -device "virtio-blk-$bus,drive=rootfs" \\
    -netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$port-:22" -device "virtio-net-$bus,netdev=net0"
"""


class ExportError(Exception):
    """One line: why the export could not be made."""


def boot_settings(dirs: Dirs) -> BootConfig:
    """The boot settings a build's boot step uses (config.json's "boot" object)."""
    return BootConfig.from_settings(BuildSpec(image=""), load_config(dirs))


def kernel_cmdline(boot: BootConfig, ssh_key: str | None = None) -> str:
    """The command line banger's boot step gives these files under QEMU (KVM, or TCG with more
    than one vCPU; on a one-vCPU TCG `-M pc` QemuVM adds TCG_PC_CMDLINE, as run-qemu.sh does),
    with the public key `ssh_key` root may log in with (the image holds no user's key)."""
    return direct_boot_cmdline(rootfs=True, network=True, tcg_pc_single_cpu=False,
                               extra=guest_cmdline(boot.cmdline, ssh_key))


def export_files(store: Store, name: str, dest: Path, force: bool = False, *,
                 boot: BootConfig | None = None, ssh_key: str | None = None,
                 kvm_status: Callable[[], kvm.KvmStatus] = kvm.cached_probe) -> dict[str, Path]:
    """Write the image's rootfs.ext4, bzImage, vmlinux and initrd.img (those it has), cmdline and
    run-qemu.sh into dest; {file name: path}. The script boots with KVM if `kvm_status` says so;
    `ssh_key` (a public key line) goes on its command line for root's authorized_keys.
    Raises images.ImageError (no such image) or ExportError (artifacts gone from the cache, files
    already there without force, I/O), each one line."""
    boot = boot or BootConfig()
    record = images.load(store, name)
    sources = _sources(store, record)
    dest = Path(dest).absolute()
    names = [*sources, CMDLINE_FILE, SCRIPT_FILE]
    if dest.exists() and not dest.is_dir():
        raise ExportError(f"{dest} exists and is not a directory")
    there = [n for n in names if os.path.lexists(dest / n)]
    if there and not force:
        raise ExportError(f"{dest} already holds {', '.join(there)}; pass --force to overwrite")
    vmlinux = sources.get(ARTIFACT_FILES["vmlinux"])
    status = kvm_status()
    script = RUN_SCRIPT.format(
        port=DEFAULT_SSH_PORT, cmdline_file=CMDLINE_FILE, tcg_cpu=TCG_CPU,
        accel="kvm" if status.usable else "tcg", kvm_reason=" ".join(status.reason.split()),
        tcg_kernel="vmlinux" if vmlinux is not None and has_pvh_entry(vmlinux) else "bzImage",
        tcg_words=f" {TCG_PC_CMDLINE}" if boot.vcpus == 1 else "",
        memory_mib=boot.memory_mib, vcpus=boot.vcpus,
        initrd=' -initrd initrd.img' if ARTIFACT_FILES["initrd"] in sources else "")
    written: dict[str, Path] = {}
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for file_name, src in sources.items():
            written[file_name] = _place(dest / file_name, lambda tmp, src=src: copy_sparse(src, tmp))
        written[CMDLINE_FILE] = _place(dest / CMDLINE_FILE, lambda tmp: tmp.write_text(kernel_cmdline(boot, ssh_key) + "\n"))
        written[SCRIPT_FILE] = _place(dest / SCRIPT_FILE, lambda tmp: tmp.write_text(script), mode=0o755)
    except OSError as exc:
        raise ExportError(f"cannot write {exc.filename or dest}: {exc.strerror or exc}") from None
    return written


def _sources(store: Store, record: images.ImageRecord) -> dict[str, Path]:
    """{export file name: cache path} of the record's boot artifacts, each present and intact."""
    rebuild = f"rebuild it with `banger build image={record.ref} name={record.name}`"
    lacking = [a for a in REQUIRED if a not in record.artifacts]
    if lacking:
        raise ExportError(f"image {record.name!r} has no {' or '.join(lacking)} artifact; {rebuild}")
    wanted = {a: d for a, d in record.artifacts.items() if a in ARTIFACT_FILES}
    gone = [a for a, d in wanted.items() if not store.verify(d)]
    if gone:
        raise ExportError(f"image {record.name!r}'s {', '.join(gone)} {'is' if len(gone) == 1 else 'are'} "
                          f"no longer in the cache (removed by `banger cache gc`?); {rebuild}")
    for digest in wanted.values():
        store.touch(digest)
    return {ARTIFACT_FILES[a]: store.path(wanted[a]) for a in ARTIFACT_FILES if a in wanted}


def _place(path: Path, write, mode: int = 0o644) -> Path:
    """Write through a temporary file beside path, then rename over it: an existing file (or a
    symlink, say into the cache) is replaced, never written through."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()
    return path


def summary_lines(written: dict[str, Path], dirs: Dirs) -> list[str]:
    """One line per file with its size (and what a sparse one really uses), then what to run."""
    width = max(len(str(p)) for p in written.values())
    lines = []
    for path in written.values():
        st = path.stat()
        used = st.st_blocks * 512
        note = f"  ({human_bytes(used)} allocated)" if used < st.st_size // 2 else ""
        lines.append(f"wrote {str(path):<{width}}  {human_bytes(st.st_size):>10}{note}")
    script = written[SCRIPT_FILE]
    lines.append(f"next: {script} {DEFAULT_SSH_PORT}")
    lines.append(f"  then, once it has booted: ssh -p {DEFAULT_SSH_PORT} -i {key_path(dirs.state)} "
                 f"-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@127.0.0.1")
    return lines
