"""Guest sessions without a VM: names, the unit and wrapper banger generates, the listing parser."""
from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest

from banger.vm import sessions
from banger.vm.sessions import SessionError, StartOptions


@pytest.mark.parametrize("name", ["a", "agent-1", "x.y_z", "A" * 64])
def test_good_names(name):
    assert sessions.check_name(name) == name
    assert sessions.unit(name) == f"banger-session-{name}"


@pytest.mark.parametrize("name", ["", "a/b", "..", ".", "a b", "A" * 65, "x;rm", "é"])
def test_bad_names_are_one_line_errors(name):
    with pytest.raises(SessionError) as err:
        sessions.check_name(name)
    assert "\n" not in str(err.value) and "bad session name" in str(err.value)


def test_the_transient_unit_appends_output_to_the_log_and_collects():
    argv = sessions.systemd_run_argv(StartOptions("s1", ("cat",), cwd="/srv/x", pipe=True))
    assert argv[0] == "systemd-run" and "--collect" in argv and "--unit=banger-session-s1" in argv
    assert "--working-directory=/srv/x" in argv
    assert "StandardOutput=append:/var/lib/banger/sessions/s1/log" in argv
    assert "StandardError=append:/var/lib/banger/sessions/s1/log" in argv
    assert argv[-2:] == ["sh", "/var/lib/banger/sessions/s1/run"]


def test_pipe_mode_runs_the_command_itself_tty_mode_under_script():
    cmd = ("sh", "-c", "echo 'hi there'; exit 3")
    assert sessions.command_line(StartOptions("p", cmd, pipe=True)) == shlex.join(cmd)
    tty = sessions.command_line(StartOptions("t", cmd))
    words = shlex.split(tty)
    assert words[:3] == ["exec", "script", "-qfec"] and words[-1] == "/dev/null"
    assert words[3].endswith("exec " + shlex.join(cmd)) and "stty rows 40 cols 120" in words[3]


def test_the_wrapper_holds_the_fifo_bounds_the_log_and_records_the_exit_status():
    text = sessions.wrapper(StartOptions("w", ("cat",), pipe=True))
    assert 'exec 0<>"$d/in"' in text  # read-write: never EOF
    assert f"-gt {sessions.LOG_MAX} ]" in text and 'cp "$d/log" "$d/log.1" && : > "$d/log"' in text
    assert text.splitlines()[-2:] == ['echo "$code" > "$d/exit"', 'exit "$code"']
    # it is valid sh, and so is the whole start script (heredoc included)
    for script in (text, sessions.start_script(StartOptions("w", ("cat", "it's"), cwd="/a b"), 1.0)):
        assert subprocess.run(["sh", "-n", "-c", script]).returncode == 0


def test_the_start_script_preflights_before_it_touches_anything():
    script = sessions.start_script(StartOptions("s", ("my-agent", "--flag"), cwd="/root/repo"), 123.0)
    lines = script.splitlines()
    first_write = next(i for i, line in enumerate(lines) if line.startswith("rm -rf"))
    preflight = "\n".join(lines[:first_write])
    assert "[ -d /root/repo ]" in preflight and "command -v my-agent" in preflight
    assert "is-active --quiet banger-session-s" in preflight
    assert f"exit {sessions.PREFLIGHT_EXIT}" in preflight
    meta = json.loads(shlex.split(next(x for x in lines if "meta.json" in x))[2])
    assert meta == {"name": "s", "command": ["my-agent", "--flag"], "cwd": "/root/repo", "mode": "tty",
                    "started": 123.0, "unit": "banger-session-s"}
    assert lines[-1].startswith("systemd-run ") and '--setenv=PATH="$PATH"' in lines[-1]


def test_the_start_script_refuses_a_missing_cwd_and_command_here_too(tmp_path):
    """The preflight part runs under any sh: it must refuse with one line and PREFLIGHT_EXIT."""
    for opts, said in ((StartOptions("s", ("sh",), cwd=str(tmp_path / "nope")), "no directory"),
                       (StartOptions("s", ("no-such-command-x",), cwd=str(tmp_path)), "not found")):
        script = sessions.start_script(opts, 1.0)
        head = script.split("\nif systemctl")[0]
        proc = subprocess.run(["sh", "-c", head], capture_output=True, text=True)
        assert proc.returncode == sessions.PREFLIGHT_EXIT and said in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_start_refuses_bad_input_before_reaching_the_vm():
    dirs = None  # never used: these are refused before the VM is looked up
    with pytest.raises(SessionError, match="no command"):
        sessions.start(dirs, "vm", StartOptions("s", ()))
    with pytest.raises(SessionError, match="absolute"):
        sessions.start(dirs, "vm", StartOptions("s", ("cat",), cwd="relative"))
    with pytest.raises(SessionError, match="bad session name"):
        sessions.start(dirs, "vm", StartOptions("a/b", ("cat",)))


def test_parse_listing_gives_running_exited_stopped_and_gone():
    def block(name, exit_text, active, pid="0"):
        meta = json.dumps({"name": name, "command": ["cat"], "cwd": "/root", "mode": "pipe", "started": 5.0})
        return (f"@@session {name}\n{meta}\n@@exit\n{exit_text}@@unit\n"
                f"ActiveState={active}\nMainPID={pid}\n")
    text = (block("run", "", "active", "42") + block("ex", "3\n", "inactive") + block("st", "stopped\n", "inactive")
            + block("gone", "", "inactive"))
    rows = {r["name"]: r for r in sessions.parse_listing(text)}
    assert rows["run"]["state"] == "running" and rows["run"]["pid"] == 42
    assert rows["ex"]["state"] == "exited" and rows["ex"]["exit_code"] == 3 and rows["ex"]["pid"] is None
    assert rows["st"]["state"] == "stopped" and rows["st"]["exit_code"] is None
    assert rows["gone"]["state"] == "gone"
    assert rows["run"]["command"] == ["cat"] and rows["run"]["cwd"] == "/root" and rows["run"]["mode"] == "pipe"


def test_attach_scripts_take_a_lock_and_are_valid_sh():
    for script in (sessions.attach_pipe_script("a"), sessions.attach_tty_script("a", 30, 100)):
        assert "flock -n 9" in script and "/var/lib/banger/sessions/a/attach.lock" in script
        assert subprocess.run(["sh", "-n", "-c", script]).returncode == 0
    assert "stty -F" in sessions.attach_tty_script("a", 30, 100) and "rows 30 cols 100" in \
        sessions.attach_tty_script("a", 30, 100)


def test_the_cli_has_the_session_group():
    from typer.testing import CliRunner

    from banger.cli.main import app

    out = CliRunner().invoke(app, ["vm", "session", "--help"]).output
    for word in ("start", "list", "logs", "attach", "send", "stop", "rm"):
        assert re.search(rf"^\W*{word}\s", out, re.M), word  # a command row of the help


def test_rm_and_start_scripts_take_the_sessions_lock_and_rm_refuses_a_running_unit():
    script = sessions.remove_script("old")
    assert subprocess.run(["sh", "-n", "-c", script]).returncode == 0
    lock = "exec 8>/var/lib/banger/sessions/.lock && flock 8"
    assert lock in script and lock in sessions.start_script(StartOptions("old", ("cat",)), 1.0)
    assert script.index("systemctl is-active --quiet banger-session-old") < script.index(
        "rm -rf /var/lib/banger/sessions/old")
    assert f"exit {sessions.PREFLIGHT_EXIT}" in script
    with pytest.raises(SessionError, match="bad session name"):
        sessions.remove_script("../x")
