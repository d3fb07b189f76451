"""Agent auth sync: the coding agents' credential files the host user has (opencode, Claude Code,
pi) copied into a running VM at the same paths under /root, mode 0600, at `vm create` and
`vm start` (opt out with `--no-auth-sync`).

A secret travels only on ssh's stdin, straight into the guest file (written next to it under a
0077 umask, then renamed): never on a command line, in a host temp file, a log, the build or an
image. Only paths are logged. A file the host does not have is skipped silently; one it cannot
read, or a copy that fails, is one warning line, and the guest keeps what it had.
"""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path, PurePosixPath
from typing import Callable

from banger.core.config import Dirs
from banger.vm import access
from banger.vm.records import VMRecord

# relative to the user's home, on the host and under /root in the guest
AUTH_FILES = (".local/share/opencode/auth.json", ".claude/.credentials.json", ".pi/agent/auth.json")
GUEST_HOME = PurePosixPath("/root")
COPY_TIMEOUT = 120.0
MAX_SIZE = 16 * 2**20  # a credentials file is small; anything bigger is not one


def _read(path: Path) -> bytes | None:
    """The file's bytes; None when the host has no such file. OSError when it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SIZE + 1)
    except FileNotFoundError:
        if path.is_symlink():
            raise FileNotFoundError(f"{path.name} is a symlink to a missing file") from None
        return None
    if len(data) > MAX_SIZE:
        raise OSError(f"larger than {MAX_SIZE // 2**20} MiB")
    return data


def copy_script(rel: str) -> str:
    """The guest side of one copy: stdin becomes /root/REL, 0600 (new directories 0700)."""
    target = GUEST_HOME / rel
    tmp = target.with_name(f".{target.name}.banger-sync")
    d, t, f = (shlex.quote(str(p)) for p in (target.parent, tmp, target))
    return (f"umask 077 && mkdir -p {d} && chmod 700 {d} && rm -f {t} && cat > {t} && chmod 600 {t} "
            f"&& mv -f {t} {f}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, IsADirectoryError):
        return "it is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def sync(dirs: Dirs, record: VMRecord, home: Path, log: Callable[[str], None]) -> list[str]:
    """Copy each auth file `home` has into the running VM; returns the paths (AUTH_FILES' words)
    copied."""
    synced = []
    for rel in AUTH_FILES:
        shown = f"~/{rel}"
        try:
            data = _read(home / rel)
        except OSError as exc:
            log(f"warning: {record.name}: cannot read {shown} ({_reason(exc)}); not synced, the VM keeps "
                f"what it has (fix the file or pass --no-auth-sync)")
            continue
        if data is None:
            continue
        argv = access.ssh_argv(dirs, record, ["sh", "-c", copy_script(rel)], tty=False)
        failed = ""
        try:
            proc = subprocess.run(argv, input=data, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  timeout=COPY_TIMEOUT)
            if proc.returncode != 0:
                said = proc.stderr.decode("utf-8", "replace").strip().splitlines()
                failed = f"exit code {proc.returncode}" + (f": {said[-1][:200]}" if said else "")
        except subprocess.TimeoutExpired:
            failed = "timed out"
        except OSError as exc:  # no ssh client
            failed = _reason(exc)
        if failed:
            log(f"warning: {record.name}: copying {shown} into the VM failed ({failed}); the VM keeps what it "
                f"has (`banger vm restart {record.name}` tries again)")
            continue
        synced.append(rel)
    return synced
