"""A running VM, whatever the backend: start it, watch its console, reach its sshd, stop it.

Cleanup is the point of this module. A VM's process, API socket, disk overlay, tap device and
forwarded port go away when `stop()` runs, and `stop()` runs:
  - on leaving `with VM(...)` (also on an exception, e.g. a failed probe or Ctrl-C),
  - on SIGTERM/SIGHUP: while a VM is live these raise `Terminated` (a KeyboardInterrupt) in
    the main thread, so the same `finally` blocks run,
  - at interpreter exit (atexit), for anything still running,
  - and if banger is SIGKILLed, the kernel kills the VMM (PR_SET_PDEATHSIG), which frees the
    forwarded port. QEMU's overlay is already unlinked then; a Firecracker VM leaves its disk copy
    (removed with old run dirs) and its tap device behind.
The VMM runs in its own session, so a Ctrl-C at the terminal reaches banger, not the VMM.
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from banger.hypervisor import process
from banger.hypervisor.choice import Choice
from banger.hypervisor.rundir import CONSOLE_TAIL_LINES, KEEP_RUN_DIRS, new_run_dir, tail_lines  # noqa: F401



class VMError(RuntimeError):
    """The VM failed to start, boot or answer; the message says why and where the console log is."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived while a VM was running."""


@dataclass
class VMConfig:
    kernel: Path  # bzImage (QEMU)
    run_dir: Path  # private to this VM: console log, overlay, sockets
    initrd: Path | None = None
    rootfs: Path | None = None  # raw ext4 image, never modified; None boots without a disk
    vmlinux: Path | None = None  # uncompressed ELF kernel (Firecracker on x86)
    memory_mib: int = 1024
    vcpus: int = 1
    cmdline: str = ""  # appended to the backend's console/root/network arguments
    network: bool = True
    # ---- a VM banger keeps (`banger vm`); None/False for the build's one-off boot check ----
    disk: Path | None = None  # the VM's own writable disk (QEMU: qcow2 over the rootfs; Firecracker: raw)
    kept: Path | None = None  # run the VMM under the keeper; its exit status goes to this file
    ssh_port: int | None = None  # loopback port to forward to the guest's sshd, when still free
    tap: "TapNIC | None" = None  # bridge networking: a tap banger prepared (instead of user-mode net)
    control_socket: Path | None = None  # QMP (QEMU) socket
    # ---- snapshots: the restored VM's devices must be the saved one's ----
    resume_socket: Path | None = None  # QEMU: a second serial port on this socket: the guest's resume channel
    incoming: str | None = None  # QEMU -incoming URI: start from this saved state, paused
    resume_fifo: Path | None = None  # Firecracker: its serial port's input (its stdin), a FIFO: the channel
    restore_state: Path | None = None  # Firecracker: load this microVM state (paused) instead of booting
    restore_memory: Path | None = None  # Firecracker: the guest memory file that goes with it (raw)
    portable_disk: bool = False  # Firecracker: name the disk relative to the run dir (a snapshot of
    # this VM then loads in any run dir whose disk has the same name)


@dataclass(frozen=True)
class TapNIC:
    name: str
    mac: str
    network: "GuestNetwork"


@dataclass(frozen=True)
class GuestNetwork:
    address: str  # guest's address/prefix
    gateway: str
    dns: str | None

    def cmdline(self) -> str:
        words = [f"banger.ip={self.address}", f"banger.gw={self.gateway}"]
        if self.dns:
            words.append(f"banger.dns={self.dns}")
        return " ".join(words)


CONSOLE_POLL = 0.02  # seconds between reads of the console log while a start waits on a line (cheap)

# ---- live VM registry, signals, exit -------------------------------------------------------------
_live: set["VM"] = set()
_live_lock = threading.Lock()
_handlers_installed = False
_TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _on_terminating_signal(signum: int, frame) -> None:
    if _live:
        raise Terminated(f"interrupted by {signal.Signals(signum).name}")
    # no VM to clean up: behave as if no handler were installed
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_signal_handlers() -> None:
    global _handlers_installed
    if _handlers_installed or threading.current_thread() is not threading.main_thread():
        return
    for sig in _TERMINATING_SIGNALS:
        if signal.getsignal(sig) is signal.SIG_DFL:  # leave a handler someone else set alone
            signal.signal(sig, _on_terminating_signal)
    _handlers_installed = True


@atexit.register
def _stop_all() -> None:
    for vm in list(_live):
        vm.stop()


@contextlib.contextmanager
def _signals_deferred():
    """Keep a second Ctrl-C/SIGTERM from interrupting a cleanup halfway: it is delivered after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    signals = (signal.SIGINT, *_TERMINATING_SIGNALS)
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for sig in dict.fromkeys(caught):
            if previous[sig] is _on_terminating_signal:  # no VM may be left to trigger it
                raise Terminated(f"interrupted by {signal.Signals(sig).name}")
            signal.raise_signal(sig)


# ---- the VM handle -----------------------------------------------------------------------------------
class VM:
    """Base class; a backend implements _launch() and may extend _cleanup() and shutdown()."""

    backend = "none"

    def __init__(self, choice: Choice, config: VMConfig):
        self.choice = choice
        # the VMM runs in the run dir: relative paths would point elsewhere
        self.config = dataclasses.replace(config, **{
            name: Path(os.path.abspath(getattr(config, name)))
            for name in ("kernel", "run_dir", "initrd", "rootfs", "vmlinux", "disk", "kept", "control_socket",
                         "resume_socket", "resume_fifo", "restore_state", "restore_memory")
            if getattr(config, name) is not None})
        self.run_dir = self.config.run_dir
        self.console_log = self.run_dir / "console.log"
        self.vmm_log = self.run_dir / "vmm.log"  # the VMM's own stderr
        self.process: subprocess.Popen | None = None  # the VMM, or its keeper for a kept VM
        self.kept: process.Kept | None = None
        self.network: GuestNetwork | None = None
        self._ssh: tuple[str, int] | None = None
        self._stopped = False
        self._console_offset = 0
        self._console_buffer = b""
        self._console_pending: list[str] = []  # lines read after a match: the next wait's first

    # ---- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> "VM":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        for what in ("kernel", "initrd", "rootfs", "vmlinux", "disk"):
            path = getattr(self.config, what)
            if path is not None and not os.access(path, os.R_OK):
                raise VMError(f"the VM's {what} {path} is missing or unreadable; rebuild the image or "
                              f"reinstall the kernel")
        _install_signal_handlers()
        with contextlib.suppress(FileNotFoundError):  # a kept VM's console log grows over its boots
            self._console_offset = self.console_log.stat().st_size
        with _live_lock:
            _live.add(self)
        try:
            self._launch()
        except BaseException:
            self.stop()
            raise

    def _launch(self) -> None:
        raise NotImplementedError

    def _spawn(self, argv: Sequence[str], stdout, env: dict | None = None, stdin: int | None = None) -> subprocess.Popen:
        with open(self.vmm_log, "ab") as err:
            if self.config.kept is None:
                self.process = process.spawn_attached(argv, stdout=stdout, stderr=err, env=env, cwd=self.run_dir,
                                                      stdin=stdin)
            else:
                if self.kept is not None and self.kept.leash is not None:  # an earlier attempt's
                    os.close(self.kept.leash)
                self.config.kept.unlink(missing_ok=True)
                self.kept = process.spawn_kept(argv, exit_file=self.config.kept, stdout=stdout, stderr=err,
                                               env=env, cwd=self.run_dir, stdin=stdin)
                self.process = self.kept.keeper
        return self.process

    @property
    def vmm_pid(self) -> int | None:
        if self.kept is not None:
            return self.kept.vmm_pid
        return self.process.pid if self.process is not None else None

    def exit_code(self) -> int | None:
        """The VMM's exit code (negative: killed by that signal); for a kept VM the keeper's record
        of it (the keeper itself always exits 0)."""
        if self.kept is not None:
            try:
                return json.loads(self.config.kept.read_text())["returncode"]
            except (OSError, ValueError, KeyError):
                return None
        return self.process.returncode if self.process is not None else None

    def detach(self) -> None:
        """A kept VM is ready: it now runs on its own; stop() and exit no longer touch it."""
        assert self.kept is not None, "only a kept VM can be detached"
        with _signals_deferred():
            self.kept.detach()
            self._stopped = True
            with _live_lock:
                _live.discard(self)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_exit(self, timeout: float) -> bool:
        """Wait for the VMM to exit on its own; True if it did."""
        if self.process is None:
            return True
        try:
            self.process.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def shutdown(self, poweroff: Callable[[], None] | None, timeout: float) -> bool:
        """Ask the guest to power off (default: `poweroff` run by the caller over SSH) and wait
        for the VMM to exit. True when it exited on its own; stop() cleans up either way."""
        if poweroff is not None and self.running:
            with contextlib.suppress(Exception):  # the SSH session dies with the guest
                poweroff()
        return self.wait_exit(timeout)

    def stop(self, grace: float = 3.0) -> None:
        """Kill the VMM (its whole process group) and remove everything it used but the logs.

        Idempotent, and safe to call from any thread or an atexit hook."""
        with _signals_deferred():
            if self.kept is not None and self.kept.leash is None:
                return  # detached: the VM is no longer this process's to stop
            if self.process is not None and self.process.poll() is None:
                self._signal_group(signal.SIGTERM)
                if not self.wait_exit(grace):
                    self._signal_group(signal.SIGKILL)
                    self.wait_exit(10.0)
            if not self._stopped:
                self._stopped = True
                self._cleanup()
            with _live_lock:
                _live.discard(self)

    def _signal_group(self, sig: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def _cleanup(self) -> None:
        """Remove what the VM used (overlay, sockets, tap); the console and VMM logs stay."""

    # ---- snapshots (steps/snapshot.py takes one, vm/restore.py starts a VM from one) ------------
    def save_machine(self, stage: Path, timeout: float) -> dict[str, Path]:
        """Stop the guest and save the whole machine into files in `stage`, by role ("memory",
        Firecracker's "vmstate"); VMError (one line) when the VMM refuses."""
        raise VMError(f"{self.backend} VMs cannot be saved")

    def wait_loaded(self, timeout: float) -> None:
        """Block until a VM started from a saved state has loaded it (it then waits, paused)."""
        raise VMError(f"{self.backend} VMs cannot be restored")

    def resume_guest(self, grow_to: int | None = None) -> None:
        """Let a loaded VM run; with grow_to (bytes) the guest learns its disk's new size."""
        raise VMError(f"{self.backend} VMs cannot be restored")

    # whether send_resume may come before resume_guest (the channel holds the bytes while the
    # loaded VM is paused, so the guest finds them as it runs); else after it
    resume_channel_buffers = False

    def send_resume(self, message: bytes):
        """Write into the guest's resume channel (resume.sh); returns what to close() after."""
        raise VMError(f"{self.backend} VMs have no resume channel")

    # ---- console ----------------------------------------------------------------------------------
    def console_tail(self, n: int = CONSOLE_TAIL_LINES) -> list[str]:
        return tail_lines(self.console_log, n)

    def failure(self, summary: str) -> VMError:
        """An error that shows the console's last lines and where the full log is."""
        lines = self.console_tail()
        shown = "\n".join(f"  | {line}" for line in lines) if lines else "  (the console printed nothing)"
        extra = ""
        if self.process is not None and self.process.poll() is not None:
            for log in self.vmm_logs():
                if said := tail_lines(log, 5):
                    extra += f"\n{self.backend} said ({log.name}):\n" + "\n".join(f"  | {line}" for line in said)
        return VMError(f"{summary}\nlast {len(lines)} console lines:\n{shown}{extra}\n"
                       f"full console log: {self.console_log}")

    def vmm_logs(self) -> list[Path]:
        return [self.vmm_log]

    def _new_console_lines(self) -> list[str]:
        try:
            with open(self.console_log, "rb") as f:
                if f.seek(0, os.SEEK_END) < self._console_offset:  # truncated: read it anew
                    self._console_offset, self._console_buffer = 0, b""
                f.seek(self._console_offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._console_offset += len(data)
        data = self._console_buffer + data
        *complete, self._console_buffer = data.split(b"\n")
        return [line.decode("utf-8", "replace").rstrip("\r") for line in complete]

    def wait_for_console_line(self, pattern: str | re.Pattern, timeout: float, what: str | None = None,
                              seen: list[str] | None = None) -> str:
        """Block until a console line matches; the VM exiting or the timeout raise VMError
        (`what` names the awaited line in that error; default: the pattern). Lines read before
        the match are appended to `seen` when given."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        what = what or repr(regex.pattern)
        deadline = time.monotonic() + timeout
        while True:
            lines, self._console_pending = self._console_pending + self._new_console_lines(), []
            for i, line in enumerate(lines):
                if regex.search(line):
                    self._console_pending = lines[i + 1:]
                    return line
                if seen is not None:
                    seen.append(line)
            if not self.running:
                # one last read: the line may have been written just before the exit
                for line in self._new_console_lines() + [self._console_buffer.decode("utf-8", "replace")]:
                    if line and regex.search(line):
                        return line
                code = self.exit_code()
                raise self.failure(f"the VM ({self.describe()}) exited with code {code} before its console "
                                   f"printed {what}")
            if time.monotonic() >= deadline:
                raise self.failure(f"the VM ({self.describe()}) did not print {what} on its console "
                                   f"within {timeout:g}s")
            time.sleep(CONSOLE_POLL)

    # ---- ssh ------------------------------------------------------------------------------------------
    @property
    def ssh_address(self) -> tuple[str, int]:
        if self._ssh is None:
            raise VMError(f"this VM ({self.describe()}) has no network")
        return self._ssh

    @property
    def ssh_port(self) -> int:
        return self.ssh_address[1]

    def wait_for_ssh_banner(self, timeout: float) -> str:
        """Block until something answers with an SSH banner at ssh_address."""
        host, port = self.ssh_address
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise self.failure(f"the VM ({self.describe()}) exited while waiting for its sshd")
            with contextlib.suppress(OSError):
                with socket.create_connection((host, port), timeout=2.0) as s:
                    s.settimeout(max(0.5, min(5.0, deadline - time.monotonic())))
                    banner = s.recv(256)
                    if banner.startswith(b"SSH-"):
                        return banner.decode("ascii", "replace").strip()
            if time.monotonic() >= deadline:
                raise self.failure(f"the VM's sshd ({host}:{port}) did not answer within {timeout:g}s")
            time.sleep(0.5)

    def describe(self) -> str:
        return f"{self.choice.backend}/{self.choice.accel}/{self.choice.machine}"
