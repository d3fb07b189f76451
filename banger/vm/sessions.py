"""Long-lived guest sessions: a command run as a transient systemd unit in the guest
(`banger-session-NAME`), so it survives ssh disconnects, banger exiting and a host-side crash.

Everything about a session lives in the guest, under /var/lib/banger/sessions/NAME/:
  meta.json  what was started (command, cwd, mode, start time), written once at start
  run        the sh wrapper the unit runs: stdin from `in`, output to `log`, exit code to `exit`
  in         a FIFO the wrapper holds open read-write (never EOF): `send` and `attach` write to it
  log        stdout and stderr (systemd `StandardOutput=append:`); bounded by the wrapper, which
             every few seconds moves a log over LOG_MAX bytes to log.1 (copy, then truncate in
             place: the unit's O_APPEND descriptor carries on at the new end), so at most about
             2 x LOG_MAX is kept
  exit       the command's exit status, or "stopped" after `session stop`
  tty        (tty mode) the session's pty, so `attach` can give it the attacher's window size
Modes: a pipe session (--pipe) reads the FIFO as plain stdin (line-oriented tools, agents
speaking a stdio protocol); a tty session (the default) runs under util-linux `script`, so the
command has a pty whose input is the FIFO and whose output (echo included) is the log.
Lines written by `send` and pipe-mode `attach` go to the FIFO one write per line (dash's printf
builtin, a buffered single write), so lines under PIPE_BUF (4096 bytes) never interleave.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from dataclasses import dataclass

from banger.core.config import Dirs
from banger.vm import access, guest
from banger.vm.records import VMRecord, VMStateError

ROOT = "/var/lib/banger/sessions"
NAME_RE = re.compile(r"^[a-zA-Z0-9_.-]{1,64}$")
LOG_MAX = 8 * 2**20
ROTATE_EVERY = 5  # seconds between the wrapper's log size checks
TTY_SIZE = (40, 120)  # rows, columns of a tty session's pty until someone attaches
PREFLIGHT_EXIT = 97  # the start script's "refused, nothing started" exit status


class SessionError(VMStateError):
    """A one-line session error (bad name, missing cwd or command, no such session)."""


@dataclass(frozen=True)
class StartOptions:
    session: str
    command: tuple[str, ...]
    cwd: str = "/root"
    pipe: bool = False


def check_name(session: str) -> str:
    if session in (".", "..") or not NAME_RE.match(session):
        raise SessionError(f"bad session name {session!r}: 1 to 64 of letters, digits, '_', '.', '-'")
    return session


def unit(session: str) -> str:
    return f"banger-session-{check_name(session)}"


def session_dir(session: str) -> str:
    return f"{ROOT}/{check_name(session)}"


def command_line(opts: StartOptions) -> str:
    """The sh line the wrapper runs: the command itself (pipe) or under `script` with a pty (tty)."""
    joined = shlex.join(opts.command)
    if opts.pipe:
        return joined
    rows, cols = TTY_SIZE
    inner = f"tty > {shlex.quote(session_dir(opts.session) + '/tty')}; stty rows {rows} cols {cols}; exec {joined}"
    return f"exec script -qfec {shlex.quote(inner)} /dev/null"


def wrapper(opts: StartOptions) -> str:
    """The `run` script: FIFO stdin held read-write, a background log bounder, the exit status."""
    d = shlex.quote(session_dir(opts.session))
    run = command_line(opts).removeprefix("exec ")
    return "\n".join([
        "#!/bin/sh",
        f"d={d}",
        'exec 0<>"$d/in"',
        f"( while sleep {ROTATE_EVERY}; do",
        f'    if [ "$(stat -c %s "$d/log" 2>/dev/null || echo 0)" -gt {LOG_MAX} ]; then',
        '      cp "$d/log" "$d/log.1" && : > "$d/log"',
        "    fi",
        "  done ) </dev/null &",
        "bounder=$!",
        run,
        "code=$?",
        'kill "$bounder" 2>/dev/null',
        'echo "$code" > "$d/exit"',
        'exit "$code"',
        ""])


def systemd_run_argv(opts: StartOptions) -> list[str]:
    """The transient unit: output appended to the log, --collect so a name can be reused."""
    d = session_dir(opts.session)
    return ["systemd-run", "--quiet", "--collect", f"--unit={unit(opts.session)}",
            f"--description=banger session {opts.session}", f"--working-directory={opts.cwd}",
            "-p", f"StandardOutput=append:{d}/log", "-p", f"StandardError=append:{d}/log",
            "-p", "TimeoutStopSec=10", "--setenv=HOME=/root", "--setenv=USER=root",
            "--setenv=TERM=xterm-256color", "--setenv=PATH=__PATH__", "sh", f"{d}/run"]


def start_script(opts: StartOptions, started: float) -> str:
    """Preflight (cwd, command, not already running), then write the session directory and start
    the unit. A refusal exits PREFLIGHT_EXIT with one line on stderr, having started nothing."""
    d = shlex.quote(session_dir(opts.session))
    cwd, first = shlex.quote(opts.cwd), shlex.quote(opts.command[0])
    meta = json.dumps({"name": opts.session, "command": list(opts.command), "cwd": opts.cwd,
                       "mode": "pipe" if opts.pipe else "tty", "started": started, "unit": unit(opts.session)})
    argv = shlex.join(systemd_run_argv(opts)).replace("__PATH__", '"$PATH"')
    no = f"exit {PREFLIGHT_EXIT}"
    say = lambda msg: f"{{ echo {shlex.quote(msg)} >&2; {no}; }}"  # noqa: E731
    return "\n".join([
        *_sessions_lock(),
        f"[ -d {cwd} ] || " + say(f"no directory {opts.cwd} in the guest"),
        f"cd {cwd} && command -v {first} >/dev/null 2>&1 || "
        + say(f"command {opts.command[0]!r} not found in the guest (cwd {opts.cwd})"),
        f"if systemctl is-active --quiet {unit(opts.session)}; then "
        + say(f"session {opts.session} is already running") + "; fi",
        "set -e",
        f"rm -rf {d} && mkdir -p {d} && mkfifo {d}/in && : > {d}/log",
        f"printf '%s\\n' {shlex.quote(meta)} > {d}/meta.json",
        f"cat > {d}/run <<'BANGER_EOF'\n{wrapper(opts)}BANGER_EOF",
        f"systemctl reset-failed {unit(opts.session)} 2>/dev/null || true",
        argv, ""])


def _sessions_lock() -> list[str]:
    """Script lines holding the guest's sessions lock to the script's end (start and rm take it,
    so a removal never deletes the directory of a session being started under the same name)."""
    return [f"mkdir -p {ROOT} && exec 8>{ROOT}/.lock && flock 8"]


def _refusal(proc: subprocess.CompletedProcess, what: str) -> None:
    said = (proc.stderr or b"").decode("utf-8", "replace").strip().splitlines()
    if proc.returncode == PREFLIGHT_EXIT:
        raise SessionError(said[-1] if said else f"{what} refused")
    if proc.returncode != 0:
        raise SessionError(f"{what} failed with exit code {proc.returncode}" + (f": {said[-1]}" if said else ""))


def start(dirs: Dirs, name: str, opts: StartOptions) -> dict:
    check_name(opts.session)
    if not opts.command:
        raise SessionError("no command: `banger vm session start NAME SESSION -- CMD...`")
    if not opts.cwd.startswith("/"):
        raise SessionError(f"--cwd must be an absolute guest path, not {opts.cwd!r}")
    record = guest.running(dirs, name)
    proc = guest.run(dirs, record, start_script(opts, time.time()), input=b"", check=False,
                     timeout=120)
    _refusal(proc, f"starting session {opts.session}")
    return get(dirs, name, opts.session, record=record)


LIST_SCRIPT = f"""cd {ROOT} 2>/dev/null || exit 0
for s in *; do
  [ -f "$s/meta.json" ] || continue
  echo "@@session $s"; cat "$s/meta.json"
  echo "@@exit"; cat "$s/exit" 2>/dev/null
  echo "@@unit"; systemctl show "banger-session-$s" -p ActiveState -p MainPID 2>/dev/null
done
"""


def parse_listing(text: str) -> list[dict]:
    """LIST_SCRIPT's output -> rows (name, state, exit_code, command, cwd, mode, started, pid)."""
    rows, part, cur = [], None, None
    for line in text.splitlines():
        if line.startswith("@@session "):
            cur = {"name": line.split(" ", 1)[1], "meta": "", "exit": "", "unit": {}}
            rows.append(cur)
            part = "meta"
        elif cur is None:
            continue
        elif line in ("@@exit", "@@unit"):
            part = line[2:]
        elif part == "unit" and "=" in line:
            key, value = line.split("=", 1)
            cur["unit"][key] = value
        elif part in ("meta", "exit"):
            cur[part] += line + "\n"
    return [_row(r) for r in rows]


def _row(raw: dict) -> dict:
    try:
        meta = json.loads(raw["meta"])
    except ValueError:
        meta = {}
    status, active = raw["exit"].strip(), raw["unit"].get("ActiveState", "inactive")
    code = int(status) if status.lstrip("-").isdigit() else None
    if status:
        state = "stopped" if status == "stopped" else "exited"
    elif active in ("active", "activating", "reloading", "deactivating"):
        state = "running"
    else:
        state = "gone"  # no exit status and no unit: the guest rebooted under it
    pid = int(raw["unit"].get("MainPID", "0") or 0)
    return {"name": raw["name"], "state": state, "exit_code": code, "command": meta.get("command", []),
            "cwd": meta.get("cwd", ""), "mode": meta.get("mode", ""), "started": meta.get("started", 0.0),
            "pid": pid if state == "running" else None}


def listing(dirs: Dirs, name: str, record: VMRecord | None = None) -> list[dict]:
    record = record or guest.running(dirs, name)
    proc = guest.run(dirs, record, LIST_SCRIPT, input=b"", timeout=60)  # not our stdin: `send` reads it
    return sorted(parse_listing(proc.stdout.decode("utf-8", "replace")), key=lambda r: r["started"])


def get(dirs: Dirs, name: str, session: str, record: VMRecord | None = None) -> dict:
    check_name(session)
    for row in listing(dirs, name, record):
        if row["name"] == session:
            return row
    raise SessionError(f"no session {session} in {name}; `banger vm session list {name}` lists them")


def _need_running(row: dict, name: str) -> None:
    if row["state"] != "running":
        raise SessionError(f"session {row['name']} in {name} is {row['state']}")


def stop(dirs: Dirs, name: str, session: str) -> dict:
    record = guest.running(dirs, name)
    row = get(dirs, name, session, record)
    d = shlex.quote(session_dir(session))
    guest.run(dirs, record, f"systemctl stop {unit(session)} 2>/dev/null; [ -s {d}/exit ] || echo stopped > {d}/exit",
              input=b"", timeout=60)
    return {**row, **get(dirs, name, session, record)}


def remove_script(session: str) -> str:
    """Forget a session that is not running: its unit's failed state, its directory (meta, log,
    FIFO, exit status). Refuses (PREFLIGHT_EXIT) when its unit runs."""
    u, d = unit(session), shlex.quote(session_dir(session))
    running = shlex.quote(f"session {session} is running; `banger vm session stop` it first")
    return "\n".join([*_sessions_lock(),
                      f"if systemctl is-active --quiet {u}; then echo {running} >&2; exit {PREFLIGHT_EXIT}; fi",
                      f"systemctl reset-failed {u} 2>/dev/null || true",
                      f"rm -rf {d}", ""])


def remove(dirs: Dirs, name: str, session: str) -> dict:
    """Remove a session that is not running (exited, stopped, or gone with a reboot); returns its
    last row."""
    record = guest.running(dirs, name)
    row = get(dirs, name, session, record)
    if row["state"] == "running":
        raise SessionError(f"session {session} in {name} is running; "
                           f"`banger vm session stop {name} {session}` first")
    proc = guest.run(dirs, record, remove_script(session), input=b"", check=False, timeout=60)
    _refusal(proc, f"removing session {session}")
    return row


def logs_script(session: str, follow: bool) -> str:
    d = shlex.quote(session_dir(session))
    if not follow:
        return f"cat {d}/log.1 {d}/log 2>/dev/null; true"
    pid = f"$(systemctl show -p MainPID --value {unit(session)})"
    return (f"cat {d}/log.1 2>/dev/null; p={pid}; "
            f'if [ "${{p:-0}}" -gt 0 ]; then exec tail -c +1 --pid="$p" -f {d}/log; else cat {d}/log; fi')


def logs(dirs: Dirs, name: str, session: str, follow: bool = False) -> int:
    """Print the session's log (log.1 then log) to our stdout; with follow, until the session ends."""
    record = guest.running(dirs, name)
    get(dirs, name, session, record)
    return guest.run(dirs, record, logs_script(session, follow), input=b"", check=False,
                     capture=False).returncode


def _line_writer(session: str) -> str:
    """Guest sh reading stdin lines, each written to the FIFO in one write (a last line without
    newline is sent with one)."""
    d = shlex.quote(session_dir(session))
    return (f"exec 3<>{d}/in; "
            "while IFS= read -r l || [ -n \"$l\" ]; do printf '%s\\n' \"$l\" >&3; done")


def send(dirs: Dirs, name: str, session: str, stdin=None) -> None:
    record = guest.running(dirs, name)
    _need_running(get(dirs, name, session, record), name)
    guest.run(dirs, record, _line_writer(session), stdin=stdin, capture=False, check=True)


def _one_attacher(session: str) -> list[str]:
    """The attach scripts' first lines: hold attach.lock, or say another attacher has it."""
    busy = shlex.quote(f"session {session} already has an attacher")
    return [f"exec 9>{shlex.quote(session_dir(session))}/attach.lock",
            f"flock -n 9 || {{ echo {busy} >&2; exit {PREFLIGHT_EXIT}; }}"]


def attach_pipe_script(session: str) -> str:
    """One attacher (flock on attach.lock): the log from its current end to our stdout, our stdin
    lines to the FIFO; ends a second after our stdin closes (output to then is shown) or when
    the session ends."""
    d = shlex.quote(session_dir(session))
    return "\n".join([
        *_one_attacher(session),
        f"p=$(systemctl show -p MainPID --value {unit(session)})",
        'exec 5<&0',
        f"n=$(stat -c %s {d}/log)",  # from here on: tail might open the log after our first line
        f'tail -c +$((n + 1)) --pid="$p" -f {d}/log & t=$!',
        f"{{ {_line_writer(session)}; sleep 1; kill $t; }} <&5 & r=$!",
        'wait $t 2>/dev/null; kill $r 2>/dev/null; exit 0', ""])


def attach_tty_script(session: str, rows: int, cols: int) -> str:
    """A raw terminal onto a tty session: recent output, then the log followed and keystrokes into
    the FIFO byte by byte; the session's pty takes the attacher's size. Detach: ssh's `~.`."""
    d = shlex.quote(session_dir(session))
    return "\n".join([
        *_one_attacher(session),
        f"[ -s {d}/tty ] && stty -F \"$(cat {d}/tty)\" rows {rows} cols {cols} 2>/dev/null",
        f"p=$(systemctl show -p MainPID --value {unit(session)})",
        "stty raw -echo", "exec 5<&0",
        f'tail -c 4096 --pid="$p" -f {d}/log & t=$!',
        f"cat <&5 > {d}/in & r=$!",  # (an & list's stdin is /dev/null unless redirected)
        'wait $t 2>/dev/null; kill $r 2>/dev/null; stty sane; exit 0', ""])


def attach_argv(dirs: Dirs, name: str, session: str, tty: bool, size: tuple[int, int] = TTY_SIZE) -> list[str]:
    """The ssh command line `session attach` execs (after checking the session runs)."""
    record = guest.running(dirs, name)
    row = get(dirs, name, session, record)
    _need_running(row, name)
    if row["mode"] == "pipe":
        script = attach_pipe_script(session)
    else:
        if not tty:
            raise SessionError(f"session {session} is a tty session: attach from a terminal "
                               f"(or `banger vm session send`/`logs`)")
        script = attach_tty_script(session, *size)
    return access.ssh_argv(dirs, record, ["sh", "-c", script], tty=row["mode"] != "pipe")
