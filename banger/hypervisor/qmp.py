"""QMP, QEMU's control protocol, through the maintained `qemu.qmp` library (imported only when a
VM is talked to): one-shot commands for any banger process, and the sequences a snapshot needs
(save the whole machine to a file; wait until a restored one has loaded, then let it run).

The socket is reached through /proc/self/fd/N/NAME, an O_PATH handle on its directory, because
unix socket paths are limited to 108 bytes and state dirs can be deep.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Iterator

from banger.core import fsutil

TIMEOUT = 5.0
# QEMU's default migration bandwidth cap (32 MiB/s) is for live migration over a network; a
# stopped VM saved to a local file has nothing to protect
SAVE_BANDWIDTH = 1 << 40


class QMPError(RuntimeError):
    """QEMU refused a command or did not answer; the message is one line."""


@contextlib.contextmanager
def session(socket_path: Path, timeout: float = TIMEOUT) -> Iterator:
    """A connected QMP monitor (qemu.qmp.legacy.QEMUMonitorProtocol); QMPError when it cannot be."""
    from qemu.qmp.legacy import QEMUMonitorProtocol

    with fsutil.socket_path(socket_path) as short:
        monitor = QEMUMonitorProtocol(short)
        try:
            monitor.connect(negotiate=True)
        except Exception as exc:
            raise QMPError(f"QEMU's control socket {socket_path} does not answer ({type(exc).__name__})") from None
        monitor.settimeout(timeout)
        try:
            yield monitor
        finally:
            with contextlib.suppress(Exception):
                monitor.close()


def command(socket_path: Path, name: str, **arguments) -> dict | None:
    """Run one QMP command; None when the socket does not answer (the caller falls back)."""
    if not socket_path.exists():
        return None
    try:
        with session(socket_path) as monitor:
            return monitor.cmd(name, **arguments)
    except Exception:  # the VM went away, or its QMP is busy
        return None


def _run(monitor, name: str, **arguments):
    try:
        return monitor.cmd(name, **arguments)
    except Exception as exc:
        raise QMPError(f"QEMU refused {name}: {exc}") from None


def save_state(socket_path: Path, uri: str, timeout: float) -> dict:
    """Stop the VM and write its whole state (devices, CPU, RAM) to the migration `uri`, e.g.
    `exec:cat > FILE`; the VM stays stopped. The final query-migrate answer."""
    with session(socket_path, timeout=max(TIMEOUT, timeout)) as monitor:
        _run(monitor, "stop")
        _run(monitor, "migrate-set-parameters", **{"max-bandwidth": SAVE_BANDWIDTH})
        _run(monitor, "migrate", uri=uri)
        deadline = time.monotonic() + timeout
        while True:
            info = _run(monitor, "query-migrate")
            status = info.get("status")
            if status == "completed":
                return info
            if status in ("failed", "cancelled"):
                raise QMPError(f"saving the VM's state failed: {info.get('error-desc', status)}")
            if time.monotonic() >= deadline:
                raise QMPError(f"saving the VM's state took longer than {timeout:g}s ({status})")
            time.sleep(0.02)


def wait_loaded(socket_path: Path, running: Callable[[], bool], timeout: float) -> None:
    """Block until a QEMU started with -incoming has loaded its state (it then waits, paused).
    QMPError when the load fails, QEMU exits or the timeout passes."""
    deadline = time.monotonic() + timeout
    while not socket_path.exists():
        if not running():
            raise QMPError("QEMU exited before it opened its control socket")
        if time.monotonic() >= deadline:
            raise QMPError(f"QEMU did not open its control socket within {timeout:g}s")
        time.sleep(0.01)
    with session(socket_path, timeout=max(TIMEOUT, timeout)) as monitor:
        while True:
            try:
                status = monitor.cmd("query-status")["status"]
            except Exception:
                raise QMPError("QEMU went away while loading the saved state") from None
            if status in ("paused", "postmigrate", "running"):
                return
            if status not in ("inmigrate", "prelaunch"):
                raise QMPError(f"loading the saved state left QEMU {status}")
            if time.monotonic() >= deadline:
                raise QMPError(f"QEMU did not load the saved state within {timeout:g}s")
            time.sleep(0.01)


def resume(socket_path: Path, block_resize: tuple[str, int] | None = None) -> None:
    """Let a loaded VM run (`cont`), after growing its disk first when asked (device, bytes:
    the guest gets the virtio notification of its new size as it resumes)."""
    with session(socket_path) as monitor:
        if block_resize is not None:
            _run(monitor, "block_resize", device=block_resize[0], size=block_resize[1])
        _run(monitor, "cont")
