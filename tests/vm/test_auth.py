"""auth.sync without a VM: a stand-in `ssh` on PATH records what it was asked to run and what
came on its stdin; the guest-side script runs here with /root moved to a temp dir. (The real
VM's side: tests/vm/test_auth_e2e.py.)"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from banger.vm import auth
from tests.vm.conftest import as_running, write_record

FAKE_SSH = """#!{python}
import os, sys
out = os.environ["FAKE_SSH_DIR"]
n = len([x for x in os.listdir(out) if x.endswith(".argv")])
with open(os.path.join(out, f"{{n}}.argv"), "w") as f:
    f.write("\\0".join(sys.argv[1:]))
with open(os.path.join(out, f"{{n}}.stdin"), "wb") as f:
    f.write(sys.stdin.buffer.read())
if os.environ.get("FAKE_SSH_FAIL"):
    print("sh: 1: cannot create /root/x: Read-only file system", file=sys.stderr)
    sys.exit(2)
"""


@pytest.fixture
def fake_ssh(tmp_path, monkeypatch):
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    calls.mkdir()
    (bin_dir / "ssh").write_text(FAKE_SSH.format(python=sys.executable))
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SSH_DIR", str(calls))

    def seen() -> list[tuple[list[str], bytes]]:
        n = len(list(calls.glob("*.argv")))
        return [((calls / f"{i}.argv").read_text().split("\0"), (calls / f"{i}.stdin").read_bytes()) for i in range(n)]
    return seen


@pytest.fixture
def running(vm_env, sleeper):
    return as_running(write_record(vm_env, "box"), sleeper().pid)


def home_with(tmp_path: Path, files: dict[str, str]) -> Path:
    home = tmp_path / "userhome"
    for rel, text in files.items():
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_text(text)
    return home


def test_present_files_go_over_stdin_missing_ones_are_skipped_silently(vm_env, running, fake_ssh, tmp_path):
    home = home_with(tmp_path, {auth.AUTH_FILES[0]: "secret-one", auth.AUTH_FILES[2]: "secret-three"})
    said: list[str] = []
    assert auth.sync(vm_env.dirs, running, home, said.append) == [auth.AUTH_FILES[0], auth.AUTH_FILES[2]]
    assert said == []
    calls = fake_ssh()
    assert [stdin for _, stdin in calls] == [b"secret-one", b"secret-three"]
    for (argv, _), rel in zip(calls, (auth.AUTH_FILES[0], auth.AUTH_FILES[2])):
        assert "-T" in argv and f"/root/{rel}" in argv[-1] and "secret" not in " ".join(argv)


def test_an_unreadable_file_is_one_warning_and_the_others_still_go(vm_env, running, fake_ssh, tmp_path):
    home = home_with(tmp_path, {auth.AUTH_FILES[1]: "secret-two"})
    (home / auth.AUTH_FILES[0]).mkdir(parents=True)  # a directory where the file should be
    (home / auth.AUTH_FILES[2]).parent.mkdir(parents=True)
    (home / auth.AUTH_FILES[2]).symlink_to(home / "gone")  # a dangling symlink
    said: list[str] = []
    assert auth.sync(vm_env.dirs, running, home, said.append) == [auth.AUTH_FILES[1]]
    assert len(said) == 2 and all("\n" not in line and line.startswith("warning: box: cannot read ~/")
                                  for line in said)
    assert f"~/{auth.AUTH_FILES[0]} (it is a directory)" in said[0]
    assert f"~/{auth.AUTH_FILES[2]}" in said[1] and "symlink" in said[1]
    assert [stdin for _, stdin in fake_ssh()] == [b"secret-two"]


def test_a_failed_copy_is_one_warning_naming_the_file(vm_env, running, fake_ssh, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_SSH_FAIL", "1")
    home = home_with(tmp_path, {auth.AUTH_FILES[1]: "secret-two"})
    said: list[str] = []
    assert auth.sync(vm_env.dirs, running, home, said.append) == []
    assert len(said) == 1 and f"copying ~/{auth.AUTH_FILES[1]} into the VM failed (exit code 2: " in said[0]
    assert "secret" not in said[0]


def test_the_guest_script_writes_0600_in_a_0700_directory_and_replaces_the_old_copy(tmp_path):
    root = tmp_path / "guestroot"
    rel = auth.AUTH_FILES[0]
    script = auth.copy_script(rel).replace("/root", str(root))
    for text in (b"first", b"second"):
        subprocess.run(["sh", "-c", script], input=text, check=True)
        target = root / rel
        assert target.read_bytes() == text
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in target.parent.iterdir()) == ["auth.json"]  # no temp file left


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # typer imported in-process
def test_the_cli_passes_no_auth_sync_through(vm_env, monkeypatch):
    from typer.testing import CliRunner

    from banger.cli.main import app
    from banger.vm import lifecycle

    got = {}
    monkeypatch.setattr(lifecycle, "create", lambda d, opts, log: got.setdefault("create", opts.auth_sync) and None)
    monkeypatch.setattr(lifecycle, "start", lambda d, n, log, auth_sync: got.setdefault("start", auth_sync) and None)
    monkeypatch.setattr(lifecycle, "restart", lambda d, n, force, log, auth_sync: got.setdefault("restart", auth_sync)
                        and None)
    runner = CliRunner()
    for words in (["create", "tiny"], ["start", "x"], ["restart", "x"]):
        runner.invoke(app, ["vm", *words, "--no-auth-sync"])
    assert got == {"create": False, "start": False, "restart": False}
