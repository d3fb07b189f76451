"""`banger vm session` end to end on one real VM (QEMU under TCG, the Debian test image): a session
outlives the ssh connection and the banger process that started or watched it; `send` and
`attach` reach a pipe session in order; `stop` ends one; preflight refuses with one line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support_tools import REPO
from tests.vm.test_vm_e2e import SMALL, banger, env, ssh  # noqa: F401  (env: the module fixture)

pytestmark = pytest.mark.slow
LOOP = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done"
VM = "sess"


@pytest.fixture(scope="module")
def vm(env):  # noqa: F811
    banger(env["vars"], "vm", "create", "vmtest", "--name", VM, *SMALL)
    return env


def sessions(env) -> dict[str, dict]:
    rows = json.loads(banger(env["vars"], "vm", "session", "list", VM, "--json").stdout)
    return {r["name"]: r for r in rows}


def popen(env, *args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "banger", *args], env={**os.environ, **env["vars"]}, cwd=REPO,
                            **kw)


def ticks(env, session) -> int:
    return banger(env["vars"], "vm", "session", "logs", VM, session).stdout.count("tick ")


def kill_tree(pid: int) -> None:
    """kill -9 a process and its ssh children (what a host-side crash leaves)."""
    kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for p in [pid, *map(int, kids)]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for(predicate, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(1)
    return False


def test_a_session_survives_its_ssh_connection_and_banger_being_killed(vm):
    start = popen(vm, "vm", "session", "start", VM, "loop", "--", "sh", "-c", LOOP,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # kill -9 the starter (and its ssh) as soon as the unit exists in the guest
    assert wait_for(lambda: ssh(vm, VM, "systemctl is-active banger-session-loop", check=False).returncode == 0
                    or start.poll() is not None, 120)
    kill_tree(start.pid)
    start.wait(10)
    # a follower killed the same way
    follow = popen(vm, "vm", "session", "logs", VM, "loop", "-f", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert b"tick" in follow.stdout.readline()
    kill_tree(follow.pid)
    follow.wait(10)
    row = sessions(vm)["loop"]
    assert row["state"] == "running" and row["command"] == ["sh", "-c", LOOP] and row["cwd"] == "/root"
    before = ticks(vm, "loop")
    assert wait_for(lambda: ticks(vm, "loop") >= before + 3, 60)
    listed = banger(vm["vars"], "vm", "session", "list", VM).stdout
    assert "loop" in listed and "running" in listed and "STARTED" in listed


def test_send_writes_lines_in_order_to_a_pipe_session(vm):
    banger(vm["vars"], "vm", "session", "start", VM, "echo", "--pipe", "--cwd", "/tmp", "--",
           "sh", "-c", 'while IFS= read -r l; do echo "got:$l:$(pwd)"; done')
    proc = subprocess.run([sys.executable, "-m", "banger", "vm", "session", "send", VM, "echo"],
                          input="one\ntwo words\nthree", text=True, capture_output=True, cwd=REPO,
                          env={**os.environ, **vm["vars"]}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    want = ["got:one:/tmp", "got:two words:/tmp", "got:three:/tmp"]
    assert wait_for(lambda: banger(vm["vars"], "vm", "session", "logs", VM, "echo").stdout.splitlines() == want, 30)


def test_attach_round_trips_a_line_and_leaves_the_session_running(vm):
    banger(vm["vars"], "vm", "session", "start", VM, "cat", "--pipe", "--", "cat")
    attach = popen(vm, "vm", "session", "attach", VM, "cat", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE)
    attach.stdin.write(b"hello through attach\n")
    attach.stdin.flush()
    assert attach.stdout.readline() == b"hello through attach\n"
    attach.stdin.close()
    assert attach.wait(60) == 0, attach.stderr.read()
    assert sessions(vm)["cat"]["state"] == "running"
    # one attacher at a time
    first = popen(vm, "vm", "session", "attach", VM, "cat", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE)
    first.stdin.write(b"first\n")
    first.stdin.flush()
    assert first.stdout.readline() == b"first\n"
    second = banger(vm["vars"], "vm", "session", "attach", VM, "cat", check=False)
    assert second.returncode != 0 and "already has an attacher" in second.stderr
    first.stdin.close()
    first.wait(60)


def test_stop_ends_a_session_and_list_says_so(vm):
    banger(vm["vars"], "vm", "session", "start", VM, "short", "--pipe", "--", "sh", "-c", "exit 3")
    assert wait_for(lambda: sessions(vm)["short"]["state"] == "exited")
    assert sessions(vm)["short"]["exit_code"] == 3
    out = banger(vm["vars"], "vm", "session", "stop", VM, "loop").stdout
    assert "stopped" in out
    assert sessions(vm)["loop"]["state"] == "stopped"
    assert ssh(vm, VM, "systemctl is-active banger-session-loop", check=False).returncode != 0
    gone = ticks(vm, "loop")
    time.sleep(3)
    assert ticks(vm, "loop") == gone
    # a stopped session's name can be used again
    banger(vm["vars"], "vm", "session", "start", VM, "loop", "--", "sleep", "300")
    assert sessions(vm)["loop"]["state"] == "running"


@pytest.mark.parametrize("args, said", [
    (["--cwd", "/no/such/dir", "--", "sleep", "1"], "no directory /no/such/dir in the guest"),
    (["--", "no-such-command-here"], "command 'no-such-command-here' not found in the guest"),
    (["--", "sleep", "1"], "bad session name"),
])
def test_preflight_errors_are_one_line_and_start_nothing(vm, args, said):
    name = "bad/name" if said == "bad session name" else "refused"
    proc = banger(vm["vars"], "vm", "session", "start", VM, name, *args, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and said in proc.stderr
    assert proc.stderr.startswith("error: ")
    assert "refused" not in sessions(vm)
    assert ssh(vm, VM, "test -e /var/lib/banger/sessions/refused", check=False).returncode == 1


def test_the_log_is_bounded(vm):
    from banger.vm.sessions import LOG_MAX

    banger(vm["vars"], "vm", "session", "start", VM, "loud", "--pipe", "--",
           "sh", "-c", f"yes 0123456789abcdef | head -c {LOG_MAX + 2**20}; echo after-rotation; sleep 300")
    d = "/var/lib/banger/sessions/loud"
    assert wait_for(lambda: ssh(vm, VM, f"test -s {d}/log.1", check=False).returncode == 0, 60)
    sizes = [int(x) for x in ssh(vm, VM, f"stat -c %s {d}/log.1 {d}/log").stdout.split()]
    assert sizes[0] > LOG_MAX and sizes[1] < LOG_MAX, sizes
    out = banger(vm["vars"], "vm", "session", "logs", VM, "loud").stdout
    assert len(out) <= 2 * LOG_MAX + 2**20
    banger(vm["vars"], "vm", "session", "stop", VM, "loud")


def test_attach_to_a_tty_session_types_into_its_pty(vm):
    """From a terminal (util-linux `script` gives this test one): keystrokes reach the session's
    shell, its output comes back, ssh's `~.` detaches and the session keeps running."""
    from tests.support_tools import need

    need("script")
    banger(vm["vars"], "vm", "session", "start", VM, "shell", "--", "sh", "-i")
    cmd = f"{sys.executable} -m banger vm session attach {VM} shell"
    feed = subprocess.Popen(["sh", "-c", "sleep 10; printf 'echo tty-$((6*7))\\r'; sleep 5; printf '\\r~.'; sleep 2"],
                            stdout=subprocess.PIPE)
    proc = subprocess.run(["script", "-qfec", cmd, "/dev/null"], stdin=feed.stdout, capture_output=True,
                          env={**os.environ, **vm["vars"]}, cwd=REPO, timeout=120)
    feed.wait(10)
    assert b"tty-42" in proc.stdout, proc.stdout[-2000:]
    assert "tty-42" in banger(vm["vars"], "vm", "session", "logs", VM, "shell").stdout
    row = sessions(vm)["shell"]
    assert row["state"] == "running" and row["mode"] == "tty"


def test_after_a_restart_sessions_are_gone_and_rm_forgets_the_ones_not_running(vm):
    banger(vm["vars"], "vm", "session", "start", VM, "nap", "--", "sleep", "600")
    banger(vm["vars"], "vm", "session", "start", VM, "done", "--pipe", "--", "true")
    assert wait_for(lambda: sessions(vm)["done"]["state"] == "exited")
    refused = banger(vm["vars"], "vm", "session", "rm", VM, "nap", check=False)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "nap in sess is running" in refused.stderr and "session stop sess nap" in refused.stderr
    assert sessions(vm)["nap"]["state"] == "running"

    banger(vm["vars"], "vm", "restart", VM)  # the guest's systemd, and with it every session unit, is new
    rows = sessions(vm)
    assert rows["nap"]["state"] == "gone" and rows["nap"]["pid"] is None, rows["nap"]
    assert rows["done"]["state"] == "exited" and rows["done"]["exit_code"] == 0
    nap_line = next(line for line in banger(vm["vars"], "vm", "session", "list", VM).stdout.splitlines()
                    if line.startswith("nap "))
    assert " gone " in nap_line and "running" not in nap_line

    for name, was in (("nap", "gone"), ("done", "exited (0)")):
        out = banger(vm["vars"], "vm", "session", "rm", VM, name).stdout
        assert out.strip() == f"session {name} in {VM}: removed (was {was})"
        assert ssh(vm, VM, f"test -e /var/lib/banger/sessions/{name}", check=False).returncode == 1
    assert "nap" not in sessions(vm) and "done" not in sessions(vm)
    again = banger(vm["vars"], "vm", "session", "rm", VM, "nap", check=False)
    assert again.returncode == 1 and again.stderr.strip() == "error: no session nap in sess; " \
        "`banger vm session list sess` lists them"
    banger(vm["vars"], "vm", "session", "start", VM, "nap", "--", "sleep", "600")  # the name is free again
    assert sessions(vm)["nap"]["state"] == "running"
