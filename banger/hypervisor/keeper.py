"""The keeper: a tiny parent for one long-lived VMM, so the VM outlives `banger` but never a
`banger vm create` that dies before the VM is ready.

    python -I -S keeper.py EXIT_FILE REPORT_FD [--stdin-fd FD] -- VMM-ARGV...

It is run as a file with the standard library only (no site-packages: ~10 MB, starts in ~20 ms).
  - fd 0 is the leash, a pipe from the banger process that starts the VM. Until banger writes
    `detach` on it, the VM is banger's: if the pipe closes first (banger exited, was killed with
    SIGKILL, or gave up), the keeper kills the VMM and exits. After `detach` the VM runs on its own.
  - REPORT_FD gets the VMM's pid, one line, then is closed.
  - The VMM gets SIGKILL when the keeper dies (PR_SET_PDEATHSIG), so no VMM is ever left without
    its keeper; the keeper forwards SIGTERM/SIGHUP/SIGINT to the VMM as SIGTERM.
  - When the VMM exits, the keeper writes EXIT_FILE atomically: {"pid", "returncode" (negative: the
    signal), "detached", "at"}; banger reads it to tell a clean power-off from a crash.
The VMM's stdout/stderr are the keeper's (the console or VMM log files banger opened); its stdin is
/dev/null, or FD with --stdin-fd (Firecracker's serial input: a FIFO, the guest's resume channel).
"""
import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
LEASH_FD = 0


def main(argv: list[str]) -> int:
    stdin_fd = None
    if len(argv) > 5 and argv[3] == "--stdin-fd" and argv[4].isdigit():
        stdin_fd, argv = int(argv[4]), argv[:3] + argv[5:]
    if len(argv) < 5 or argv[3] != "--" or not argv[2].isdigit():
        sys.stderr.write("usage: keeper.py EXIT_FILE REPORT_FD [--stdin-fd FD] -- VMM-ARGV...\n")
        return 2
    exit_file, report_fd, vmm_argv = argv[1], int(argv[2]), argv[4:]
    libc = ctypes.CDLL(None, use_errno=True)
    keeper = os.getpid()

    def die_with_keeper() -> None:  # in the child, between fork and exec
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != keeper:
            os._exit(1)

    vmm = subprocess.Popen(vmm_argv, stdin=subprocess.DEVNULL if stdin_fd is None else stdin_fd,
                           preexec_fn=die_with_keeper, close_fds=True, pass_fds=())
    if stdin_fd is not None:
        os.close(stdin_fd)  # the VMM's now
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: _signal(vmm, signal.SIGTERM))
    try:
        os.write(report_fd, f"{vmm.pid}\n".encode())
        os.close(report_fd)
    except OSError:
        pass
    pidfd = os.pidfd_open(vmm.pid)
    detached = False
    leash_open = True
    pending = b""
    while vmm.poll() is None:
        watched = [pidfd] + ([LEASH_FD] if leash_open else [])
        try:
            ready, _, _ = select.select(watched, [], [])
        except InterruptedError:
            continue
        if LEASH_FD in ready:
            chunk = os.read(LEASH_FD, 64)
            pending += chunk
            if b"detach" in pending:
                detached, leash_open = True, False
                os.close(LEASH_FD)
            elif not chunk:  # banger went away before the VM was ready: take the VM with it
                leash_open = False
                _signal(vmm, signal.SIGKILL)
    returncode = vmm.wait()
    _write_atomic(exit_file, {"pid": vmm.pid, "returncode": returncode, "detached": detached, "at": time.time()})
    return 0


def _signal(vmm: subprocess.Popen, sig: int) -> None:
    try:
        vmm.send_signal(sig)
    except (ProcessLookupError, OSError):
        pass


def _write_atomic(path: str, value: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
