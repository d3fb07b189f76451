"""Boot a VM with QEMU: no root needed.

`-M microvm` under KVM; `-M pc` under TCG (microvm hangs intermittently under TCG here).
The rootfs is attached with `snapshot=on`: the guest's writes go to a temporary overlay QEMU
creates (and unlinks at once) in the VM's run dir, so the cached image is never modified.
User-mode networking forwards a free 127.0.0.1 port to the guest's port 22.
"""
from __future__ import annotations

import os
import shlex
import socket
import struct
import time
from pathlib import Path

from banger.core import fsutil
from banger.hypervisor import qmp
from banger.hypervisor.ports import free_port, port_is_free, port_listening
from banger.hypervisor.vm import VM, GuestNetwork, VMError, tail_lines

# QEMU's user-mode network (slirp) defaults
USER_NET = GuestNetwork(address="10.0.2.15/24", gateway="10.0.2.2", dns="10.0.2.3")
# Under TCG: every feature QEMU can emulate (x86-64-v3 included, so any distribution boots) but
# XSAVEOPT. The kernel then context-switches FPU state with plain XSAVE, and a Debian boot to SSH
# drops from ~32 s to ~24 s here (bench/bench_boot.py); userspace never needs XSAVEOPT.
TCG_CPU = "max,xsaveopt=off"
# Kernel arguments under TCG on `-M pc` with one vCPU only. pci=noacpi: PCI interrupts are routed
# from the BIOS's PIRQ table instead of ACPI's interrupt-link methods, which the guest evaluates in
# its AML interpreter for every PCI device it enables: the initramfs (loading the virtio drivers,
# mounting the root) took ~1.8 s of guest time with them and ~0.75 s without (medians of 4 boots).
# It also keeps the kernel from reading the I/O APIC from ACPI (this kernel has no MP-table code),
# so the guest runs on the legacy 8259 PIC, virtio with INTx instead of MSI-X: fine for one CPU,
# but it would leave a second vCPU offline, hence the vcpus == 1 condition. A later pci=
# argument cannot undo it; KVM boots never get it.
# (mitigations=off was measured too: no gain under TCG, so the kernel's defaults stay.)
TCG_PC_CMDLINE = "pci=noacpi"
# TCG's translation buffer (QEMU's default: 1 GiB). An idle Debian VM (1 vCPU, 1 GiB) held
# ~578 MiB of RSS with the default and ~388 MiB with 128 MiB, with the same boot-to-SSH time and
# the same time for a small shell workload (3 interleaved `vm create` runs each).
TCG_TB_MIB = 128
PORT_ATTEMPTS = 3
HOSTFWD_FAILED = "Could not set up host forwarding rule"
DISK_DEVICE = "rootfs"  # the disk's drive id: what a restore's block_resize names


def direct_boot_cmdline(*, rootfs: bool, network: "bool | GuestNetwork", tcg_pc_single_cpu: bool, extra: str) -> str:
    """The kernel command line of a QEMU -kernel boot: serial console, the virtio disk as a
    read-write root, the guest address for banger's network agent (network=True: user-mode
    networking's), TCG_PC_CMDLINE on
    a one-vCPU `-M pc` under TCG, then `extra`. (`banger image export` writes it too.)"""
    words = ["console=ttyS0"]
    if rootfs:
        words += ["root=/dev/vda", "rw"]
    if network:
        words.append((USER_NET if network is True else network).cmdline())
    if tcg_pc_single_cpu:
        words.append(TCG_PC_CMDLINE)
    if extra:
        words.append(extra)
    return " ".join(words)


class QemuVM(VM):
    backend = "qemu"
    resume_channel_buffers = True  # a socket chardev: the loaded (paused) UART takes the bytes at `cont`

    def cmdline(self) -> str:
        cfg, choice = self.config, self.choice
        return direct_boot_cmdline(rootfs=cfg.rootfs is not None or cfg.disk is not None,
                                   network=self.guest_network() if cfg.network else False,
                                   tcg_pc_single_cpu=choice.accel == "tcg" and choice.machine == "pc" and cfg.vcpus == 1,
                                   extra=cfg.cmdline)

    def guest_network(self) -> GuestNetwork:
        return self.config.tap.network if self.config.tap is not None else USER_NET

    def boot_kernel(self) -> Path:
        """The kernel image QEMU loads: under TCG the uncompressed vmlinux when it has a PVH
        entry point. QEMU then jumps straight into it, skipping the bzImage's decompressor,
        which takes ~0.7 s of emulated CPU (the kernel banner appears at ~0.6 s instead of
        ~1.4 s here). Nothing randomizes the kernel's address then (KASLR is the decompressor's
        job): acceptable for a VM whose CPU is emulated anyway, and KVM keeps the bzImage."""
        vmlinux = self.config.vmlinux
        if self.choice.accel == "tcg" and vmlinux is not None and has_pvh_entry(vmlinux):
            return vmlinux
        return self.config.kernel

    def argv(self, ssh_port: int | None) -> list[str]:
        cfg, choice = self.config, self.choice
        mmio = choice.machine == "microvm"  # no PCI bus: virtio devices on virtio-mmio
        bus = "device" if mmio else "pci"
        args = [choice.binary, "-name", f"banger-{self.run_dir.name}",
                "-machine", choice.machine, "-accel", f"tcg,tb-size={TCG_TB_MIB}" if choice.accel == "tcg" else choice.accel,
                "-cpu", "host" if choice.accel == "kvm" else TCG_CPU,
                "-m", str(cfg.memory_mib), "-smp", str(cfg.vcpus),
                "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",  # a guest reboot ends the VM
                # append=on: a kept VM's console log keeps its earlier boots (`-serial file:` truncates)
                "-chardev", f"file,id=console,path={self.console_log},append=on", "-serial", "chardev:console",
                "-kernel", str(self.boot_kernel()), "-append", self.cmdline(),
                "-device", f"virtio-rng-{bus}"]
        if cfg.initrd is not None:
            args += ["-initrd", str(cfg.initrd)]
        if cfg.disk is not None:  # the VM's own qcow2 overlay: its writes persist
            args += ["-drive", f"file={cfg.disk},format=qcow2,if=none,id=rootfs,cache=writeback,discard=unmap",
                     "-device", f"virtio-blk-{bus},drive=rootfs"]
        elif cfg.rootfs is not None:
            args += ["-drive", f"file={cfg.rootfs},format=raw,if=none,id=rootfs,snapshot=on,cache=unsafe",
                     "-device", f"virtio-blk-{bus},drive=rootfs"]
        if cfg.tap is not None:
            # a snapshot's NIC was saved over user-mode networking: restored onto a tap, it keeps
            # the features it had (no virtio-net header), and the saved state's user-mode network
            # section needs a (restricted, unconnected) user-mode netdev to load into
            restoring = cfg.incoming is not None
            args += ["-netdev", f"tap,id=net0,ifname={cfg.tap.name},script=no,downscript=no"
                                f"{',vnet_hdr=off' if restoring else ''}",
                     "-device", f"virtio-net-{bus},netdev=net0,mac={cfg.tap.mac}"]
            if restoring:
                args += ["-netdev", "user,id=saved,restrict=on"]
        elif ssh_port is not None:
            args += ["-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
                     "-device", f"virtio-net-{bus},netdev=net0"]
        if cfg.resume_socket is not None:  # ttyS1: a snapshot's resume channel (resume.sh)
            args += ["-chardev", f"socket,id=resume,path={self._near(cfg.resume_socket)},server=on,wait=off",
                     "-device", "isa-serial,chardev=resume"]
        if cfg.control_socket is not None:
            args += ["-qmp", f"unix:{self._near(cfg.control_socket)},server=on,wait=off"]
        if cfg.incoming is not None:
            args += ["-incoming", cfg.incoming]
        return args

    def _near(self, sock: Path) -> Path | str:
        """A socket path relative to the run dir QEMU runs in when it is there: unix socket paths
        are limited to 108 bytes, and state dirs can be deep."""
        return sock.name if sock.parent == self.run_dir else sock

    def _launch(self) -> None:
        # the snapshot=on overlay goes to $TMPDIR: keep it in the run dir
        env = {**os.environ, "TMPDIR": str(self.run_dir)}
        for sock in (self.config.control_socket, self.config.resume_socket):
            if sock is not None:
                sock.unlink(missing_ok=True)
        if self.config.tap is not None:
            with open(self.console_log, "ab") as console:
                self._spawn(self.argv(None), stdout=console, env=env)
            self.network = self.config.tap.network
            self._ssh = (str(self.network.address).split("/")[0], 22)
            return
        wanted = self.config.ssh_port
        for attempt in range(PORT_ATTEMPTS):
            if not self.config.network:
                port = None
            elif attempt == 0 and wanted and port_is_free(wanted):  # a restarted VM keeps its port
                port = wanted
            else:
                port = free_port()
            with open(self.console_log, "ab") as console:
                self._spawn(self.argv(port), stdout=console, env=env)
            if port is None or self._wait_for_hostfwd(port):
                if port is not None:
                    self.network = USER_NET
                    self._ssh = ("127.0.0.1", port)
                return
            # another process took the port between free_port() and QEMU's bind: try another
        raise self.failure(f"QEMU could not forward a loopback port to the guest's sshd "
                           f"after {PORT_ATTEMPTS} attempts")

    def _cleanup(self) -> None:
        for sock in (self.config.control_socket, self.config.resume_socket):
            if sock is not None:
                sock.unlink(missing_ok=True)

    # ---- snapshots: QMP, and the second serial port as the resume channel ----------------------
    def save_machine(self, stage: Path, timeout: float) -> dict[str, Path]:
        """QEMU's migration to a file: the stream holds RAM (without its zero pages), CPU and
        devices; the disk was flushed when the save completed."""
        memory = stage / "memory.bin"
        try:
            qmp.save_state(self.config.control_socket, f"exec:cat > {shlex.quote(str(memory))}", timeout=timeout)
        except qmp.QMPError as exc:
            raise self.failure(str(exc)) from None
        qmp.command(self.config.control_socket, "quit")
        self.wait_exit(10)
        if not memory.is_file() or memory.stat().st_size == 0:
            raise VMError(f"QEMU saved no state; see {self.vmm_log}")
        return {"memory": memory}

    def wait_loaded(self, timeout: float) -> None:
        try:
            qmp.wait_loaded(self.config.control_socket, lambda: self.running, timeout)
        except qmp.QMPError as exc:
            said = " ".join(tail_lines(self.vmm_log, 1))
            raise VMError(f"{exc}{' (QEMU: ' + said + ')' if said else ''}") from None

    def resume_guest(self, grow_to: int | None = None) -> None:
        try:
            qmp.resume(self.config.control_socket, block_resize=(DISK_DEVICE, grow_to) if grow_to else None)
        except qmp.QMPError as exc:
            raise VMError(str(exc)) from None

    def send_resume(self, message: bytes) -> socket.socket:
        """Over the resume socket (ttyS1); the connection stays open until the guest has read it."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with fsutil.socket_path(self.config.resume_socket) as short:
                s.connect(short)
            s.sendall(message)
        except OSError:
            s.close()
            raise
        return s

    def _wait_for_hostfwd(self, port: int, timeout: float = 10.0) -> bool:
        """True once QEMU listens on the port; False if it exited because it could not bind it."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.vmm_log.read_text(errors="replace") if self.vmm_log.exists() else ""
                if HOSTFWD_FAILED in log:
                    return False
                raise self.failure(f"QEMU exited with code {self.exit_code()} at start")
            if port_listening(port):  # slirp listens before the guest starts
                return True
            time.sleep(0.02)
        raise self.failure(f"QEMU did not open its forwarded port {port} within {timeout:g}s")


PT_NOTE = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point QEMU's -kernel looks for in an ELF kernel


def has_pvh_entry(path: Path) -> bool:
    """Is `path` a 64-bit little-endian ELF with a Xen PHYS32_ENTRY note (a PVH-bootable vmlinux)?"""
    try:
        with open(path, "rb") as f:
            header = f.read(64)
            if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
                return False
            phoff, = struct.unpack_from("<Q", header, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(phnum):
                p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
                if p_type != PT_NOTE or p_filesz > 1 << 20:
                    continue
                f.seek(p_offset)
                if _has_xen_note(f.read(p_filesz), XEN_ELFNOTE_PHYS32_ENTRY):
                    return True
    except (OSError, struct.error):
        return False
    return False


def _has_xen_note(notes: bytes, wanted: int) -> bool:
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, note_type = struct.unpack_from("<III", notes, pos)
        name = notes[pos + 12:pos + 12 + namesz]
        if name.rstrip(b"\0") == b"Xen" and note_type == wanted:
            return True
        pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False
