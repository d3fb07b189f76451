"""`banger vm run` end to end: one real VM (QEMU under TCG) from the Debian test image plus a layer
with the host's git, a temp repo with history, edits, untracked, ignored and deleted files; the
guest's tree, history and ownership; the guest's commit and uncommitted work exported as a patch
that `git apply` takes on a clean host checkout."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from banger.devtools import debian_image as devimage
from tests.support_images import DEBIAN_TAG
from tests.support_kernel import vm_home
from tests.support_tools import REPO, need
from tests.vm.test_workspace import git, make_repo

pytestmark = pytest.mark.slow


def banger(env_vars, *args, timeout=900, check=True):
    proc = subprocess.run([sys.executable, "-m", "banger", *args], capture_output=True,
                          env={**os.environ, **env_vars}, cwd=REPO, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"banger {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def env(tmp_path_factory, debian_bundle, debian_layout, registry):
    need("qemu-system-x86_64", "qemu-img", "ssh", "mkfs.ext4", "debugfs", "git", "skopeo")
    if not Path("/usr/bin/git").exists() or not Path("/etc/debian_version").read_text().startswith("12"):
        pytest.skip("the guest's git comes from the host, which must be Debian 12 like the guest")
    root = tmp_path_factory.mktemp("ws")
    ref = devimage.push(devimage.with_host_files(debian_layout, root / "layout"), DEBIAN_TAG, registry.host, "banger-test/debian-git")
    values = vm_home(root, debian_bundle)
    state = root / "state" / "banger"
    home = root / "home"
    home.mkdir()
    subprocess.run(["git", "config", "--global", "user.name", "Host Person"], env={**os.environ, "HOME": str(home)}, check=True)
    subprocess.run(["git", "config", "--global", "user.email", "host@example.test"], env={**os.environ, "HOME": str(home)}, check=True)
    banger(values, "build", f"image={ref}", "name=wstest", "boot=no")
    yield {"vars": values, "root": root, "state": state}
    banger(values, "vm", "rm", "--force", "ws1", check=False)


@pytest.fixture(scope="module")
def ws1(env):
    repo = make_repo(env["root"])
    git(repo, "remote", "add", "origin", "https://example.test/src.git")
    proc = banger(env["vars"], "vm", "run", str(repo), "--image", "wstest", "--name", "ws1", "--vcpus", "1",
                  "--memory", "768M", "--", "git", "status", "--porcelain", check=False)
    return repo, proc


def guest(env, script: str, check=True) -> str:
    proc = banger(env["vars"], "vm", "ssh", "ws1", "--", "sh", "-c", script, check=check)
    return proc.stdout.decode()


def listing(script_root: str) -> str:
    return f"cd {script_root} && find . -type f -not -path './.git/*' | LC_ALL=C sort | xargs -d '\\n' sha1sum"


def test_vm_run_runs_the_command_in_the_repo_and_passes_its_exit_code(env, ws1):
    repo, proc = ws1
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    err = proc.stderr.decode()
    assert "VM ready" in err and "repo copy (" in err and "depth 10" in err and "overlay (2 files, 1 deleted)" in err
    assert sorted(proc.stdout.decode().splitlines()) == [" D gone.txt", " M keep.txt", '?? "new file.txt"']
    record = json.loads((env["state"] / "vms" / "ws1" / "vm.json").read_text())
    assert record["extra"]["workspace"]["base_commit"] == git(repo, "rev-parse", "HEAD").strip()
    failing = banger(env["vars"], "vm", "ssh", "ws1", "--", "sh", "-c", "cd /root/repo && test -e keep.txt && exit 9",
                     check=False)
    assert failing.returncode == 9


def test_the_guest_tree_is_the_host_work_tree_without_ignored_files(env, ws1):
    repo, _ = ws1
    host = subprocess.run(["sh", "-c", listing(str(repo))], capture_output=True, text=True, check=True).stdout
    host = "\n".join(l for l in host.splitlines() if not l.endswith(("debug.log", "build/out.bin"))) + "\n"
    assert guest(env, listing("/root/repo")) == host
    assert guest(env, "cd /root/repo && git rev-parse HEAD").strip() == git(repo, "rev-parse", "HEAD").strip()
    assert 1 <= int(guest(env, "cd /root/repo && git rev-list --count HEAD")) <= 10
    assert guest(env, "cd /root/repo && git remote get-url origin").strip() == "https://example.test/src.git"
    assert guest(env, "cd /root/repo && git config user.email").strip() == "repo@example.test"
    assert guest(env, "git config --global user.email").strip() == "host@example.test"
    assert guest(env, "find /root/repo ! -user root ! -group root | wc -l").strip() == "0"
    assert guest(env, "find /root/repo ! -user root | wc -l").strip() == "0"


def test_the_guests_committed_and_uncommitted_work_export_as_a_patch_git_apply_takes(env, ws1, tmp_path):
    repo, _ = ws1
    base = git(repo, "rev-parse", "HEAD").strip()
    guest(env, "cd /root/repo && echo committed > sub/counter.txt && git commit -qam 'guest work' && "
               "echo uncommitted >> keep.txt && printf 'new\\n' > fresh.txt")
    out = tmp_path / "work.patch"
    proc = banger(env["vars"], "vm", "workspace", "export", "ws1", "--output", str(out))
    changed = proc.stderr.decode()
    assert "sub/counter.txt" in changed and "fresh.txt" in changed and "keep.txt" in changed
    clean = tmp_path / "clean"
    subprocess.run(["git", "clone", "-q", str(repo), str(clean)], check=True)
    git(clean, "checkout", "-q", base)
    subprocess.run(["git", "-C", str(clean), "apply", str(out)], check=True)
    assert (clean / "sub" / "counter.txt").read_text() == "committed\n"
    assert (clean / "keep.txt").read_text() == "keep, edited\nuncommitted\n"
    assert (clean / "fresh.txt").read_text() == "new\n"
    assert (clean / "new file.txt").read_text() == "untracked\n" and not (clean / "gone.txt").exists()


def test_vm_run_hands_its_stdin_to_the_command_whole(env, tmp_path):
    """Every ssh banger runs before CMD's own (copy, overlay, the guest's git config) leaves
    banger's stdin alone: piped input reaches CMD from its first byte."""
    repo = make_repo(tmp_path)
    sent = b"".join(b"line %d of the input\n" % i for i in range(2000))
    proc = subprocess.run([sys.executable, "-m", "banger", "vm", "run", str(repo), "--image", "wstest", "--name", "ws2",
                           "--vcpus", "1", "--memory", "768M", "--", "sh", "-c", "cat; echo end"], input=sent,
                          capture_output=True, env={**os.environ, **env["vars"]}, cwd=REPO, timeout=900)
    try:
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
        assert proc.stdout == sent + b"end\n", proc.stdout[:300]
    finally:
        banger(env["vars"], "vm", "rm", "--force", "ws2", check=False)
