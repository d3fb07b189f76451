"""The one-line errors of the VM commands (`vm`, `vm workspace`, `vm session`, `vm acp`): what the
VM layer and what it calls raise, printed as `error: ...` with exit code 1 (never a traceback);
and handing the terminal to `ssh` (exec_ssh)."""
from __future__ import annotations

import os
import sys

from banger.cli.common import fail


def _errors() -> tuple[type[BaseException], ...]:
    from banger.vm.errors import user_errors

    return user_errors()


def run(fn, *args, **kwargs):
    """fn(*args, **kwargs), its one-line errors turned into `error: ...`."""
    import subprocess

    try:
        return fn(*args, **kwargs)
    except _errors() as exc:
        fail(str(exc))
    except subprocess.TimeoutExpired:
        fail(f"{args[1] if len(args) > 1 and isinstance(args[1], str) else 'the VM'} did not answer over ssh in time")
    except KeyboardInterrupt:
        fail("interrupted")


def exec_ssh(argv: list[str]) -> None:
    """Replace this process with ssh (its tty, its exit code); one line when ssh is missing."""
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        fail("`ssh` is not installed; install the openssh-client package")
