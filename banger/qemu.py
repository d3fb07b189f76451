"""Boot a VM with QEMU: no root needed.

`-M microvm` under KVM; `-M pc` under TCG (microvm hangs intermittently under TCG here).
The rootfs is attached with `snapshot=on`: the guest's writes go to a temporary overlay QEMU
creates (and unlinks at once) in the VM's run dir, so the cached image is never modified.
User-mode networking forwards a free 127.0.0.1 port to the guest's port 22.
"""
from __future__ import annotations

import os
import time

from .vm import VM, GuestNetwork, free_port, port_listening

# QEMU's user-mode network (slirp) defaults
USER_NET = GuestNetwork(address="10.0.2.15/24", gateway="10.0.2.2", dns="10.0.2.3")
# Under TCG: every feature QEMU can emulate (x86-64-v3 included, so any distribution boots) but
# XSAVEOPT. The kernel then context-switches FPU state with plain XSAVE, and a Debian boot to SSH
# drops from ~32 s to ~24 s here (bench/bench_boot.py); userspace never needs XSAVEOPT.
TCG_CPU = "max,xsaveopt=off"
PORT_ATTEMPTS = 3
HOSTFWD_FAILED = "Could not set up host forwarding rule"


class QemuVM(VM):
    backend = "qemu"

    def cmdline(self) -> str:
        words = ["console=ttyS0"]
        if self.config.rootfs is not None:
            words += ["root=/dev/vda", "rw"]
        if self.config.network:
            words.append(USER_NET.cmdline())
        if self.config.cmdline:
            words.append(self.config.cmdline)
        return " ".join(words)

    def argv(self, ssh_port: int | None) -> list[str]:
        cfg, choice = self.config, self.choice
        mmio = choice.machine == "microvm"  # no PCI bus: virtio devices on virtio-mmio
        bus = "device" if mmio else "pci"
        args = [choice.binary, "-name", f"banger-{self.run_dir.name}",
                "-machine", f"{choice.machine},accel={choice.accel}",
                "-cpu", "host" if choice.accel == "kvm" else TCG_CPU,
                "-m", str(cfg.memory_mib), "-smp", str(cfg.vcpus),
                "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-serial", f"file:{self.console_log}",
                "-kernel", str(cfg.kernel), "-append", self.cmdline(),
                "-device", f"virtio-rng-{bus}"]
        if cfg.initrd is not None:
            args += ["-initrd", str(cfg.initrd)]
        if cfg.rootfs is not None:
            args += ["-drive", f"file={cfg.rootfs},format=raw,if=none,id=rootfs,snapshot=on,cache=unsafe",
                     "-device", f"virtio-blk-{bus},drive=rootfs"]
        if ssh_port is not None:
            args += ["-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
                     "-device", f"virtio-net-{bus},netdev=net0"]
        return args

    def _launch(self) -> None:
        # the snapshot=on overlay goes to $TMPDIR: keep it in the run dir
        env = {**os.environ, "TMPDIR": str(self.run_dir)}
        for attempt in range(PORT_ATTEMPTS):
            port = free_port() if self.config.network else None
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

    def _wait_for_hostfwd(self, port: int, timeout: float = 10.0) -> bool:
        """True once QEMU listens on the port; False if it exited because it could not bind it."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.vmm_log.read_text(errors="replace") if self.vmm_log.exists() else ""
                if HOSTFWD_FAILED in log:
                    return False
                raise self.failure(f"QEMU exited with code {self.process.returncode} at start")
            if port_listening(port):  # slirp listens before the guest starts
                return True
            time.sleep(0.02)
        raise self.failure(f"QEMU did not open its forwarded port {port} within {timeout:g}s")
