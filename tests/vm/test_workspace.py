"""Workspaces without a VM: the repo checks, the overlay list, and prepare/export end to end with
the guest's `sh` replaced by the host's (real git, a temp repo with history and every kind of edit)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from banger.vm import guest, records, workspace
from banger.vm.workspace import WorkspaceError
from tests.vm.conftest import write_record


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def make_repo(root: Path, commits: int = 15) -> Path:
    repo = root / "src"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Repo Person")
    git(repo, "config", "user.email", "repo@example.test")
    (repo / ".gitignore").write_text("*.log\nbuild/\n")
    (repo / "keep.txt").write_text("keep\n")
    (repo / "gone.txt").write_text("to be deleted\n")
    (repo / "sub").mkdir()
    for i in range(commits):
        (repo / "sub" / "counter.txt").write_text(f"{i}\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"commit {i}")
    (repo / "keep.txt").write_text("keep, edited\n")  # modified tracked
    (repo / "new file.txt").write_text("untracked\n")  # untracked, with a space
    (repo / "debug.log").write_text("ignored\n")
    (repo / "build").mkdir()
    (repo / "build" / "out.bin").write_bytes(b"\0ignored")
    (repo / "gone.txt").unlink()  # deleted
    return repo


def test_find_repo_names_the_top_level_from_a_subdirectory(tmp_path):
    repo = make_repo(tmp_path, commits=1)
    assert workspace.find_repo(repo / "sub") == repo.resolve()


def test_find_repo_refuses_bare_repos_plain_directories_and_empty_repos(tmp_path):
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "b.git")], check=True)
    with pytest.raises(WorkspaceError, match="bare git repository"):
        workspace.find_repo(tmp_path / "b.git")
    (tmp_path / "plain").mkdir()
    with pytest.raises(WorkspaceError, match="not inside a git work tree"):
        workspace.find_repo(tmp_path / "plain")
    subprocess.run(["git", "init", "-q", str(tmp_path / "empty")], check=True)
    with pytest.raises(WorkspaceError, match="no commit yet"):
        workspace.find_repo(tmp_path / "empty")
    with pytest.raises(WorkspaceError, match="does not exist"):
        workspace.find_repo(tmp_path / "nowhere")


def test_find_repo_refuses_submodules_unless_full_copy(tmp_path):
    inner = make_repo(tmp_path, commits=1)
    outer = tmp_path / "outer"
    outer.mkdir()
    git(outer, "init", "-q")
    subprocess.run(["git", "-C", str(outer), "-c", "protocol.file.allow=always", "submodule", "add", "-q",
                    str(inner), "dep"], check=True, capture_output=True)
    git(outer, "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q", "-m", "sub")
    with pytest.raises(WorkspaceError, match="submodules.*--full-copy"):
        workspace.find_repo(outer)
    assert workspace.find_repo(outer, full_copy=True) == outer.resolve()


def test_the_overlay_is_modified_and_untracked_files_without_ignored_ones_plus_deletions(tmp_path):
    repo = make_repo(tmp_path)
    changed, deleted = workspace.overlay_files(repo)
    assert changed == ["keep.txt", "new file.txt"]
    assert deleted == ["gone.txt"]


@pytest.fixture
def local_guest(vm_env, tmp_path, monkeypatch):
    """A VM record whose "guest" is this machine: scripts run in the host's sh, /root/repo is a temp dir."""
    target = tmp_path / "guest-repo"
    monkeypatch.setattr(workspace, "GUEST_REPO", str(target))

    def run(dirs, record, script, *, input=None, stdin=None, check=True, capture=True, timeout=None):
        proc = subprocess.run(["sh", "-c", script], input=input, capture_output=True)
        assert not check or proc.returncode == 0, proc.stderr
        return proc

    monkeypatch.setattr(guest, "run", run)
    return write_record(vm_env, "ws"), target


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(root).parts}


def test_the_copy_tar_has_no_per_file_pax_headers_and_keeps_whole_second_mtimes(tmp_path):
    import io
    import os
    import tarfile

    for i in range(20):
        f = tmp_path / f"f{i}.txt"
        f.write_text("x\n")
        os.utime(f, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))  # fractional seconds
    data = workspace._tar(tmp_path)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    assert len(members) == 20 and all(m.pax_headers == {} for m in members)
    assert {m.mtime for m in members} == {1_700_000_000} and {m.uid for m in members} == {0}
    assert len(data) <= 20 * 1024 + 10240  # a header and one block per file, plus the end


def test_prepare_copies_a_shallow_checkout_with_the_work_tree_and_export_brings_the_work_back(vm_env, local_guest, tmp_path):
    record, target = local_guest
    repo = make_repo(tmp_path)
    head = git(repo, "rev-parse", "HEAD").strip()
    lines = []
    ws = workspace.prepare(vm_env.dirs, record, repo / "sub", log=lines.append)
    assert ws == {"path": str(repo.resolve()), "base_commit": head, "branch": "main"}
    assert records.load(vm_env.state, "ws").extra["workspace"] == ws
    assert lines[0].startswith("repo copy (") and "depth 10" in lines[0]
    assert lines[1] == "overlay (2 files, 1 deleted)"
    expected = {k: v for k, v in tree(repo).items() if k not in ("debug.log", "build/out.bin")}
    assert tree(target) == expected
    assert git(target, "rev-parse", "HEAD").strip() == head
    assert int(git(target, "rev-list", "--count", "HEAD")) == workspace.DEPTH
    assert git(target, "config", "user.email").strip() == "repo@example.test"
    assert git(target, "remote").strip() == ""  # the host repo has no origin
    assert sorted(git(target, "status", "--porcelain").splitlines()) == [" D gone.txt", " M keep.txt", '?? "new file.txt"']
    # the guest's work: a commit, then uncommitted edits and a new file
    (target / "sub" / "counter.txt").write_text("guest commit\n")
    git(target, "-c", "user.name=g", "-c", "user.email=g@g", "commit", "-q", "-am", "guest")
    (target / "keep.txt").write_text("guest edit\n")
    (target / "added.bin").write_bytes(b"\0\1binary")
    patch, names = workspace.export(vm_env.dirs, records.load(vm_env.state, "ws"))
    assert sorted(names) == ["added.bin", "gone.txt", "keep.txt", "new file.txt", "sub/counter.txt"]
    clean = tmp_path / "clean"
    subprocess.run(["git", "clone", "-q", str(repo), str(clean)], check=True)
    git(clean, "checkout", "-q", head)
    subprocess.run(["git", "-C", str(clean), "apply"], input=patch, check=True)
    assert tree(clean) == tree(target)


def test_prepare_with_a_branch_from_an_old_commit_fetches_it_outside_the_window(vm_env, local_guest, tmp_path):
    record, target = local_guest
    repo = make_repo(tmp_path)
    old = git(repo, "rev-parse", "HEAD~12").strip()
    lines = []
    ws = workspace.prepare(vm_env.dirs, record, repo, branch="feature", from_ref="HEAD~12", log=lines.append)
    assert ws["base_commit"] == old and ws["branch"] == "feature"
    assert git(target, "rev-parse", "HEAD").strip() == old
    assert git(target, "symbolic-ref", "--short", "HEAD").strip() == "feature"
    assert lines[1] == "overlay (0 files, 0 deleted)"  # the host's edits sit on HEAD, not there
    assert (target / "sub" / "counter.txt").read_text() == "2\n"


def test_export_without_a_base_commit_is_a_one_line_error(vm_env, local_guest):
    record, _ = local_guest
    with pytest.raises(WorkspaceError, match="no workspace base commit"):
        workspace.export(vm_env.dirs, record)
