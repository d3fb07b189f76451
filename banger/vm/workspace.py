"""Workspaces: a host git checkout copied into a VM at /root/repo, and the guest's work brought
back as a patch.

The copy is shallow (DEPTH commits, never the whole history unless full_copy): a temporary
`git clone --depth` of the host repo (the checkout commit fetched explicitly when it lies outside
the window), checked out at the host's HEAD (or on a new branch), is sent as one tar over ssh
stdin; then the working tree is overlaid: modified tracked files and untracked non-ignored
files as a second tar, deleted files removed. Everything is extracted as root (--no-same-owner:
no host uid leaks in). The commit it starts from is recorded as the VM's workspace base_commit;
`export` diffs the guest's index (after `git add -A`) against it, so committed and uncommitted
guest work both come back, as one binary patch `git apply` takes.
"""
from __future__ import annotations

import io
import os
import shlex
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

from banger.core.config import Dirs
from banger.vm import guest, records
from banger.vm.records import VMRecord, VMStateError

GUEST_REPO = "/root/repo"
DEPTH = 10
Log = Callable[[str], None]


class WorkspaceError(VMStateError):
    """One line naming the problem and the fix."""


def _git(repo: Path | str, *args: str, check: bool = True) -> str:
    try:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise WorkspaceError("`git` is not installed on the host; install the git package") from None
    if check and proc.returncode != 0:
        said = proc.stderr.strip().splitlines()
        raise WorkspaceError(f"git {args[0]} in {repo} failed" + (f": {said[-1]}" if said else ""))
    return proc.stdout


def _config(repo: Path, key: str, *scope: str) -> str:
    return _git(repo, "config", *scope, "--get", key, check=False).strip()


def find_repo(path: Path | str = ".", full_copy: bool = False) -> Path:
    """The git work tree PATH is in (its top level)."""
    path = Path(path)
    if not path.exists():
        raise WorkspaceError(f"{path} does not exist")
    if path.is_file():
        path = path.parent
    if _git(path, "rev-parse", "--is-bare-repository", check=False).strip() == "true":
        raise WorkspaceError(f"{path} is a bare git repository; point at a checkout (a work tree) instead")
    top = _git(path, "rev-parse", "--show-toplevel", check=False).strip()
    if not top:
        raise WorkspaceError(f"{path} is not inside a git work tree; pass the path of a checkout")
    repo = Path(top)
    if not _git(repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False).strip():
        raise WorkspaceError(f"{repo} has no commit yet; commit something first")
    if not full_copy and ((repo / ".gitmodules").exists() or _git(repo, "submodule", "status", check=False).strip()):
        raise WorkspaceError(f"{repo} has submodules, which a shallow copy does not carry; "
                             f"pass --full-copy to copy the full history (submodules are still not copied)")
    return repo


def overlay_files(repo: Path) -> tuple[list[str], list[str]]:
    """(files to send: modified tracked and untracked non-ignored ones, files deleted in the work
    tree), relative to the repo's top level."""
    deleted = sorted(set(_z(_git(repo, "ls-files", "-d", "-z"))))
    gone = set(deleted)
    changed = sorted(n for n in set(_z(_git(repo, "ls-files", "-m", "-o", "--exclude-standard", "-z")))
                     if n not in gone and os.path.lexists(repo / n))
    return changed, deleted


def _z(out: str) -> list[str]:
    return [n for n in out.split("\0") if n]


def _has_commit(repo: Path | str, sha: str) -> bool:
    return subprocess.run(["git", "-C", str(repo), "cat-file", "-e", f"{sha}^{{commit}}"],
                          capture_output=True).returncode == 0


def _copy(repo: Path, tmp: Path, commits: list[str], full_copy: bool) -> Path:
    """A clone of repo in tmp holding every commit in `commits` (shallow unless full_copy)."""
    clone = tmp / "repo"
    depth = [] if full_copy else ["--depth", str(DEPTH)]
    _git(tmp, "clone", "--quiet", "--no-local", "--no-checkout", *depth, f"file://{repo}", str(clone))
    missing = [c for c in commits if not _has_commit(clone, c)]
    if missing:  # the checkout commit outside the window (detached HEAD, another branch): ask for it
        _git(clone, "fetch", "--quiet", *depth, "--upload-pack",
             "git -c uploadpack.allowAnySHA1InWant=true upload-pack", "origin", *missing)
    return clone


def _tar(root: Path, names: list[str] | None = None) -> bytes:
    """A tar of root (everything, or `names` relative to it), owners dropped, mtimes in whole
    seconds (a fractional one costs a 1 KiB PAX header per file: a fifth of a 10k-file copy)."""
    buf = io.BytesIO()

    def anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = int(info.mtime)
        return info

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in (names if names is not None else sorted(os.listdir(root))):
            tar.add(root / name, arcname=name, recursive=names is None, filter=anonymous)
    return buf.getvalue()


def prepare(dirs: Dirs, record: VMRecord, path: Path | str = ".", *, branch: str | None = None,
            from_ref: str | None = None, full_copy: bool = False, log: Log = lambda m: None) -> dict:
    """Put the checkout at PATH into the running VM at /root/repo; returns the workspace record."""
    repo = find_repo(path, full_copy)
    if from_ref and not branch:
        raise WorkspaceError("--from needs --branch (the new branch starts there)")
    head = _git(repo, "rev-parse", "HEAD").strip()
    start = head
    if branch:
        if _git(repo, "check-ref-format", "--branch", branch, check=False).strip() == "":
            raise WorkspaceError(f"{branch!r} is not a valid branch name")
        ref = from_ref or "HEAD"
        start = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False).strip()
        if not start:
            raise WorkspaceError(f"--from {ref}: no such commit in {repo}")
    host_branch = _git(repo, "symbolic-ref", "--quiet", "--short", "HEAD", check=False).strip()
    local_branch = branch or host_branch
    overlay = start == head  # the working tree's edits belong on top of HEAD only
    with tempfile.TemporaryDirectory(prefix="banger-ws-") as tmp:
        clone = _copy(repo, Path(tmp), sorted({head, start}), full_copy)
        if local_branch:
            _git(clone, "checkout", "--quiet", "-B", local_branch, start)
        else:
            _git(clone, "checkout", "--quiet", "--detach", start)
        for ref in _git(clone, "for-each-ref", "--format=%(refname)", "refs/remotes").split():
            _git(clone, "update-ref", "-d", ref)
        origin = _config(repo, "remote.origin.url")
        if origin:
            _git(clone, "remote", "set-url", "origin", origin)
        else:
            _git(clone, "remote", "remove", "origin")
        for key in ("user.name", "user.email"):
            if value := _config(repo, key):
                _git(clone, "config", key, value)
        shallow = (clone / ".git" / "shallow").exists()
        depth = int(_git(clone, "rev-list", "--count", "HEAD").strip())
        copy = _tar(clone)
    log(f"repo copy ({len(copy)} bytes, {'depth ' + str(DEPTH) if shallow else f'full history, {depth} commits'})")
    q = shlex.quote(GUEST_REPO)
    guest.run(dirs, record, "command -v git >/dev/null || echo 'warning: the guest has no git' >&2; "
                            f"rm -rf {q} && mkdir -p {q} && tar -x --no-same-owner -C {q} -f -", input=copy)
    changed, deleted = overlay_files(repo) if overlay else ([], [])
    if changed:
        guest.run(dirs, record, f"tar -x --no-same-owner -C {q} -f -", input=_tar(repo, changed))
    if deleted:
        guest.run(dirs, record, f"cd {q} && xargs -0 rm -f --", input="\0".join(deleted).encode())
    log(f"overlay ({len(changed)} files, {len(deleted)} deleted)")
    _guest_config(dirs, record, repo)
    workspace = {"path": str(repo), "base_commit": start, "branch": local_branch or None}
    with records.locked(dirs.state, record.name):
        fresh = records.load(dirs.state, record.name)
        fresh.extra = {**fresh.extra, "workspace": workspace}
        records.save(dirs.state, fresh)
    record.extra = fresh.extra
    return workspace


def _guest_config(dirs: Dirs, record: VMRecord, repo: Path) -> None:
    """safe.directory and the host's global git identity in the guest's /root/.gitconfig."""
    lines = [f"git config --global --get-all safe.directory | grep -qx {shlex.quote(GUEST_REPO)} || "
             f"git config --global --add safe.directory {shlex.quote(GUEST_REPO)}"]
    for key in ("user.name", "user.email"):
        if value := _config(repo, key, "--global"):
            lines.append(f"git config --global {key} {shlex.quote(value)}")
    guest.run(dirs, record, "command -v git >/dev/null || exit 0; export HOME=/root; " + " && ".join(lines),
              input=b"")  # not our stdin: `vm run -- CMD` hands it to CMD


def export(dirs: Dirs, record: VMRecord, base_commit: str | None = None) -> tuple[bytes, list[str]]:
    """(binary patch of the guest's /root/repo against base_commit, the changed file names)."""
    base = base_commit or (record.extra.get("workspace") or {}).get("base_commit")
    if not base:
        raise WorkspaceError(f"{record.name} has no workspace base commit; pass --base-commit, or "
                             f"`banger vm workspace prepare {record.name} PATH` first")
    q, b = shlex.quote(GUEST_REPO), shlex.quote(base)
    probe = guest.run(dirs, record, f"command -v git >/dev/null || exit 3; cd {q} || exit 4; "
                                    f"git cat-file -e {b}^{{commit}} || exit 5", input=b"", check=False)
    problem = {3: "the guest has no git", 4: f"the guest has no {GUEST_REPO}",
               5: f"commit {base} is not in the guest's {GUEST_REPO}"}.get(probe.returncode)
    if problem:
        raise WorkspaceError(f"cannot export from {record.name}: {problem}")
    if probe.returncode != 0:
        raise WorkspaceError(f"cannot reach {record.name} over ssh (exit code {probe.returncode})")
    guest.run(dirs, record, f"cd {q} && git add -A", input=b"")
    patch = guest.run(dirs, record, f"cd {q} && git diff --cached --binary {b}", input=b"").stdout
    names = guest.run(dirs, record, f"cd {q} && git diff --cached --name-only -z {b}", input=b"").stdout
    return patch, [n for n in names.decode("utf-8", "replace").split("\0") if n]
