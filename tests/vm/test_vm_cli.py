"""`banger vm list|show` and `banger ps` over fabricated records in a private state dir (one of
them "running": its VMM is a live `sleep` of this test), and the CLI's one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from banger.vm import records
from tests.support_tools import REPO
from tests.vm.conftest import as_running, write_record

COLUMNS = {"name", "image", "state", "address", "vcpus", "memory_mib", "created"}


def banger(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "banger", *args], capture_output=True, text=True,
                          env={**os.environ, **env.vars}, cwd=REPO, timeout=120)


def ok(env, *args) -> str:
    proc = banger(env, *args)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


@pytest.fixture
def fleet(vm_env, sleeper):
    """made (created), off (stopped), dead (crashed), live (running), created in that order."""
    now = time.time()
    write_record(vm_env, "made", created=now - 4000)
    write_record(vm_env, "off", state="stopped", reason="the guest powered off", created=now - 3000, boots=1)
    write_record(vm_env, "dead", state="crashed", reason="the VMM was killed by SIGKILL", created=now - 2000,
                 memory_mib=1024, vcpus=2)
    (records.vm_dir(vm_env.state, "dead") / "console.log").write_text("Linux version 6.1\nlast words\n")
    live = as_running(write_record(vm_env, "live", created=now - 60), sleeper().pid)
    records.save(vm_env.state, live)
    return vm_env


def test_list_shows_running_vms_with_the_documented_columns(fleet):
    rows = json.loads(ok(fleet, "vm", "list", "--json"))
    assert [r["name"] for r in rows] == ["live"]
    row = rows[0]
    assert COLUMNS <= set(row)
    assert (row["image"], row["state"], row["address"], row["vcpus"], row["memory_mib"]) == \
        ("tiny", "running", "127.0.0.1:2222", 1, 512)
    assert isinstance(row["created"], float) and row["ssh"] == "ssh live.vm"


def test_list_all_is_every_vm_oldest_first_with_its_state(fleet):
    rows = json.loads(ok(fleet, "vm", "list", "--all", "--json"))
    assert [(r["name"], r["state"]) for r in rows] == [("made", "created"), ("off", "stopped"), ("dead", "crashed"),
                                                       ("live", "running")]
    assert all(COLUMNS <= set(r) for r in rows)
    assert rows[2]["reason"] == "the VMM was killed by SIGKILL" and rows[2]["address"] == ""


def test_list_quiet_latest_and_the_table(fleet):
    assert ok(fleet, "vm", "list", "--quiet").split() == ["live"]
    assert ok(fleet, "vm", "list", "-a", "-q").split() == ["made", "off", "dead", "live"]
    assert json.loads(ok(fleet, "vm", "list", "--all", "--quiet", "--json")) == ["made", "off", "dead", "live"]
    assert ok(fleet, "vm", "list", "--all", "--latest", "--quiet").split() == ["live"]
    latest = json.loads(ok(fleet, "vm", "list", "--latest", "--json"))
    assert [r["name"] for r in latest] == ["live"]
    table = ok(fleet, "vm", "list", "--all").splitlines()
    assert table[0].split() == ["NAME", "IMAGE", "STATE", "ADDRESS", "VCPUS", "MEMORY", "CREATED"]
    dead = next(line for line in table if line.startswith("dead"))
    assert dead.split()[:5] == ["dead", "tiny", "crashed", "-", "2"] and "1.0 GiB" in dead
    assert "hour ago" in dead or "minutes ago" in dead
    assert len(table) == 5


def test_ps_and_ls_are_vm_list(fleet):
    for flags in ([], ["--all"], ["--all", "--json"]):
        listed = ok(fleet, "vm", "list", *flags)
        assert ok(fleet, "ps", *flags) == listed
        assert ok(fleet, "vm", "ls", *flags) == listed


def test_list_of_a_fresh_state_dir(vm_env):
    assert json.loads(ok(vm_env, "vm", "list", "--all", "--json")) == []
    assert ok(vm_env, "vm", "list").splitlines() == ["NAME  IMAGE  STATE  ADDRESS  VCPUS  MEMORY  CREATED"]


def test_a_vm_whose_disk_is_gone_is_listed_broken(fleet):
    (records.vm_dir(fleet.state, "off") / "disk.qcow2").unlink()
    row = {r["name"]: r for r in json.loads(ok(fleet, "vm", "list", "--all", "--json"))}["off"]
    assert row["state"] == "broken" and "`banger vm rm off`" in row["reason"]


def test_show_json_is_the_record_with_its_row(fleet):
    shown = json.loads(ok(fleet, "vm", "show", "dead", "--json"))
    assert shown["name"] == "dead" and shown["state"] == "crashed" and shown["backend"] == "qemu"
    assert shown["id"] == records.load(fleet.state, "dead").id
    assert shown["console_tail"] == ["Linux version 6.1", "last words"]
    assert COLUMNS <= set(shown)


def test_show_text(fleet):
    crashed = ok(fleet, "vm", "show", "dead")
    assert "state:    crashed (the VMM was killed by SIGKILL)" in crashed
    assert "console (last lines):" in crashed and "  | last words" in crashed
    running = ok(fleet, "vm", "show", "live")
    assert f"ssh:      ssh -F {fleet.vars['BANGER_SSH_CONFIG']} live.vm" in running and "127.0.0.1:2222" in running


@pytest.mark.parametrize("args, message", [
    (["vm", "show", "ghost"], "no VM named 'ghost'; `banger vm list --all` shows them"),
    (["vm", "ssh", "ghost"], "no VM named 'ghost'"),
    (["vm", "start", "ghost"], "no VM named 'ghost'"),
    (["vm", "stop", "ghost"], "no VM named 'ghost'"),
    (["vm", "rm", "ghost"], "no VM named 'ghost'"),
    (["vm", "logs", "ghost"], "no VM named 'ghost'"),
    (["vm", "show", "Bad_Name"], "'Bad_Name' is not a valid VM name"),
    (["vm", "ssh", "off"], "off is stopped; `banger vm start off` starts it"),
    (["vm", "rm", "live"], "live is running; `banger vm stop live` first, or `banger vm rm --force live`"),
    (["vm", "start", "live"], "live is running already"),
    (["vm", "create", "tiny", "--memory", "abc"], "--memory 'abc' is not a size"),
    (["vm", "create", "tiny", "--name", "off"], "a VM named 'off' exists"),
    (["vm", "create", "nope", "--no-start"], "no image named 'nope'"),
    (["vm", "create", "tiny", "--net", "user", "--hypervisor", "firecracker"], "no user-mode networking"),
])
def test_errors_are_one_line_exit_1_no_traceback(fleet, args, message):
    proc = banger(fleet, *args)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(records.names(fleet.state)) == ["dead", "live", "made", "off"]  # nothing made or removed
