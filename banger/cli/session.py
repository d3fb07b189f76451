"""`banger vm session ...`: long-lived commands in a VM (transient systemd units in the guest)."""
from __future__ import annotations

import shutil
import sys
from typing import List

import typer

from banger.cli.common import dirs, emit, typer_app
from banger.cli.vm_errors import exec_ssh, run as _run

session_app = typer_app(no_args_is_help=True,
                        help="Commands that keep running in a VM: start, list, logs, attach, send, stop, rm.")
COLUMNS = ("SESSION", "STATE", "MODE", "STARTED", "CWD", "COMMAND")




def _state(row: dict) -> str:
    if row["state"] == "exited":
        return f"exited ({row['exit_code']})"
    return row["state"]


def lines(rows: list[dict]) -> list[str]:
    import shlex

    from banger.vm.records import age

    table = [COLUMNS] + [(r["name"], _state(r), r["mode"], age(r["started"]), r["cwd"], shlex.join(r["command"]))
                         for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]


@session_app.command("start")
def start(name: str, session: str,
          command: List[str] = typer.Argument(..., metavar="-- CMD..."),
          cwd: str = typer.Option("/root", "--cwd", help="Guest directory to run in."),
          pipe: bool = typer.Option(False, "--pipe", help="Plain stdin fed by `send`/`attach` (no pty)."),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Start CMD in the VM as session SESSION; it keeps running after ssh and banger go away."""
    from banger.vm import sessions

    row = _run(sessions.start, dirs(), name, sessions.StartOptions(session=session, command=tuple(command),
                                                                    cwd=cwd, pipe=pipe))
    emit(row, as_json, [f"session {session} in {name}: {_state(row)} ({row['mode']})",
                        f"logs:   banger vm session logs {name} {session} -f",
                        f"attach: banger vm session attach {name} {session}"])


@session_app.command("list")
def session_list(name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """The VM's sessions: SESSION STATE MODE STARTED CWD COMMAND."""
    from banger.vm import sessions

    rows = _run(sessions.listing, dirs(), name)
    emit(rows, as_json, lines(rows))


session_app.command("ls", help="Alias of `banger vm session list`.")(session_list)


@session_app.command("logs")
def logs(name: str, session: str,
         follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the session ends.")) -> None:
    """The session's output (bounded: the current log and the one before it)."""
    from banger.vm import sessions

    sys.stdout.flush()
    try:
        _run(sessions.logs, dirs(), name, session, follow=follow)
    except KeyboardInterrupt:
        pass


@session_app.command("send")
def send(name: str, session: str) -> None:
    """Write stdin's lines to the session's input, each line in one write (atomic under 4 KiB)."""
    from banger.vm import sessions

    _run(sessions.send, dirs(), name, session)


@session_app.command("attach")
def attach(name: str, session: str) -> None:
    """Pipe session: stdin lines in, output out, until stdin closes. Tty session: a terminal onto
    it (detach with `~.` after a newline). One attacher at a time."""
    from banger.vm import access, sessions

    size = shutil.get_terminal_size((120, 40))
    argv = _run(sessions.attach_argv, dirs(), name, session, tty=access.interactive(),
                size=(size.lines, size.columns))
    exec_ssh(argv)


@session_app.command("stop")
def stop(name: str, session: str) -> None:
    """Stop the session (SIGTERM to all its processes, SIGKILL after 10 s)."""
    from banger.vm import sessions

    row = _run(sessions.stop, dirs(), name, session)
    typer.echo(f"session {session} in {name}: {_state(row)}")


@session_app.command("rm")
def rm(name: str, session: str) -> None:
    """Remove a session that is not running (exited, stopped, or gone after a reboot): its log and metadata."""
    from banger.vm import sessions

    row = _run(sessions.remove, dirs(), name, session)
    typer.echo(f"session {session} in {name}: removed (was {_state(row)})")
