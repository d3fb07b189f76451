"""`banger vm run` on a big generated git repository, through the real CLI: what the repo copy
sends to the guest (shallow vs --full-copy), and how long `vm run` takes until a command answers
in /root/repo (VM restored from a snapshot vs booted with --cold), interleaved.

    PYTHONPATH=. python3 bench/bench_workspace.py [--image NAME] [--rounds N] [--files N]
        [--commits N] [--vcpus N] [--memory SIZE] [--cache-dir DIR] [--json]

The repository (--files files of text in 100-file directories, --commits commits, each after the
first editing 5 files) is written with `git fast-import` and repacked once, then kept under the
system temp dir (banger-bench-workspace/) for the next run. Its working tree is clean, so the
overlay sends nothing and the repo copy is all there is.

Bytes: the size of the tar banger pipes into `ssh` for the repo copy, from the line banger logs
(`repo copy (N bytes, ...)`: len() of the very buffer given to ssh's stdin; ssh adds only its
framing, no compression). Split into the guest's .git and the checked-out files with `du` in the
guest, once per copy kind.

Time: from starting `banger vm run REPO --image IMAGE -- git rev-parse HEAD` to its exit (the
commit printed from /root/repo), split by the moments banger's log lines arrive: `VM ready`
(create done), `repo copy` (the host's clone, checkout and tar done), `overlay` (the guest
extracted the tar). Per round, in rotating order: restored + shallow, --cold + shallow, restored
+ --full-copy. Before the rounds, one `vm create` makes the image's snapshot for this shape when
the cache has none (reported apart).

The image must have git: by default bench-debian-git, built when missing from the demo's cached
Debian layout (`banger demo` makes it) plus a layer with the host's git (the host must be Debian
12 like the image), as tests/vm/test_workspace_e2e.py does; it stays in the cache for later runs.
Same private state dir and clean-up as bench_vm.py.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_vm import REPO, Bench  # noqa: E402

GEN_VERSION = "1"
EDITS_PER_COMMIT = 5
KINDS = ("restore", "cold", "restore-full")
COPY_RE = re.compile(r"repo copy \((\d+) bytes, ([^)]*)\)")


# ---- the repository --------------------------------------------------------------------------
def _data(text: str) -> bytes:
    raw = text.encode()
    return b"data %d\n%s\n" % (len(raw), raw)


def generate_repo(dest: Path, files: int, commits: int, seed: int = 1) -> None:
    """A checkout at dest (must not exist) with `files` text files and `commits` commits."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(3000)]

    def line() -> str:
        return " ".join(rng.choices(vocab, k=rng.randint(3, 10)))

    paths = [f"src/m{i // 100:03d}/f{i:05d}.txt" for i in range(files)]
    contents = [[line() for _ in range(rng.randint(10, 70))] for _ in paths]
    dest.mkdir(parents=True)
    git = ["git", "-C", str(dest)]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    imp = subprocess.Popen([*git, "fast-import", "--quiet"], stdin=subprocess.PIPE)
    out = imp.stdin
    for c in range(commits):
        touched = range(files) if c == 0 else rng.sample(range(files), EDITS_PER_COMMIT)
        if c:
            for i in touched:
                lines = contents[i]
                lines[rng.randrange(len(lines))] = line()
                lines.insert(rng.randrange(len(lines) + 1), line())
        when = 1_700_000_000 + c * 3600
        out.write(b"commit refs/heads/main\n")
        out.write(b"committer Bench <bench@example.test> %d +0000\n" % when)
        out.write(_data(f"change {c}" if c else "initial import"))
        for i in touched:
            out.write(b"M 100644 inline %s\n" % paths[i].encode())
            out.write(_data("\n".join(contents[i]) + "\n"))
    out.close()
    if imp.wait() != 0:
        raise SystemExit("git fast-import failed")
    subprocess.run([*git, "repack", "-a", "-d", "-q"], check=True)
    subprocess.run([*git, "checkout", "-q", "-f", "main"], check=True)
    subprocess.run([*git, "config", "user.email", "bench@example.test"], check=True)


def cached_repo(files: int, commits: int) -> Path:
    base = Path(tempfile.gettempdir()) / "banger-bench-workspace"
    repo = base / f"repo-{files}f-{commits}c-v{GEN_VERSION}"
    if not repo.is_dir():
        base.mkdir(exist_ok=True)
        staging = base / f".{repo.name}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        start = time.perf_counter()
        generate_repo(staging, files, commits)
        os.rename(staging, repo)
        print(f"generated {repo} in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return repo


def repo_facts(repo: Path) -> dict:
    def du(path: Path, *exclude: str) -> int:
        args = ["du", "-sb", *(f"--exclude={e}" for e in exclude), str(path)]
        return int(subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()[0])
    git = ["git", "-C", str(repo)]
    count = lambda *a: int(subprocess.run([*git, *a], capture_output=True, text=True, check=True).stdout.strip())  # noqa: E731
    return {"files": len(subprocess.run([*git, "ls-files", "-z"], capture_output=True, check=True).stdout.split(b"\0")) - 1,
            "commits": count("rev-list", "--count", "HEAD"), "git_dir_bytes": du(repo / ".git"),
            "work_tree_bytes": du(repo, ".git")}


# ---- the image -------------------------------------------------------------------------------
def ensure_git_image(bench: Bench, name: str, tmp: Path) -> None:
    if bench.banger("image", "show", name, check=False)[1].returncode == 0:
        return
    from banger.devtools import debian_image as devimage

    if not Path("/usr/bin/git").exists() or not Path("/etc/debian_version").read_text().startswith("12"):
        raise SystemExit(f"no image {name}, and the host is no Debian 12 with git to make one from; "
                         f"pass --image NAME of an image that has git")
    demo = Path(bench.env.get("BANGER_CACHE_DIR") or Path.home() / ".cache" / "banger") / "demo"
    layout = demo / "debian-oci"
    print(f"building image {name}: {layout.name} plus the host's git", file=sys.stderr, flush=True)
    devimage.build_debian_layout(layout, devimage.DEFAULT_SUITE, demo / "debian-src")
    with_git = devimage.with_host_files(layout, tmp / "git-layout")
    took, _ = bench.banger("build", f"image=oci-layout:{with_git}:{devimage.DEFAULT_SUITE}", f"name={name}", "boot=no")
    shutil.rmtree(with_git, ignore_errors=True)
    print(f"built {name} in {took:.1f} s", file=sys.stderr, flush=True)


# ---- one `vm run` ----------------------------------------------------------------------------
def vm_run(bench: Bench, repo: Path, image: str, name: str, kind: str, hardware: list[str]) -> dict:
    flags = (["--cold"] if kind == "cold" else []) + (["--full-copy"] if kind.endswith("full") else [])
    argv = [sys.executable, "-m", "banger", "vm", "run", str(repo), "--image", image, "--name", name,
            *hardware, *flags, "--", "git", "rev-parse", "HEAD"]
    marks: dict[str, float] = {}
    err: list[str] = []
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=bench.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)

    def read_stderr() -> None:
        for line in proc.stderr:
            now = time.perf_counter() - start
            err.append(line)
            for key, needle in (("ready", ": VM ready"), ("copied", "repo copy ("), ("extracted", "overlay (")):
                if needle in line and key not in marks:
                    marks[key] = now
    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    out = proc.stdout.read()
    proc.wait()
    total = time.perf_counter() - start
    reader.join()
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    if proc.returncode != 0 or out.strip() != head or len(marks) < 3:
        raise SystemExit(f"`banger vm run` ({kind}) failed ({proc.returncode}), printed {out.strip()!r}:\n"
                         + "".join(err)[-3000:])
    copy = COPY_RE.search("".join(err))
    rec = bench.record(name)
    if bool(rec.get("snapshot")) == (kind == "cold"):
        raise SystemExit(f"{name}: expected {'a cold boot' if kind == 'cold' else 'a restore'}:\n" + "".join(err))
    return {"kind": kind, "total": total, "create": marks["ready"], "host_copy": marks["copied"] - marks["ready"],
            "guest_extract": marks["extracted"] - marks["copied"], "command": total - marks["extracted"],
            "copy_bytes": int(copy.group(1)), "copy_what": copy.group(2), "load": os.getloadavg()[0]}


def guest_sizes(bench: Bench, name: str) -> dict:
    out = subprocess.run(["ssh", "-F", str(bench.ssh_config), "-o", "BatchMode=yes", f"{name}.vm",
                          "cd /root/repo && du -sb .git && du -sb --exclude=.git . && git rev-list --count HEAD"],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"ssh {name}.vm: {out.stderr.strip()}")
    git_dir, tree, commits = out.stdout.split("\n")[:3]
    return {"guest_git_dir_bytes": int(git_dir.split()[0]), "guest_work_tree_bytes": int(tree.split()[0]),
            "guest_commits": int(commits)}


def spread(values: list[float]) -> str:
    return (f"median {statistics.median(values):6.2f} s  (min {min(values):.2f}, max {max(values):.2f}, "
            f"n={len(values)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default="bench-debian-git", help="an image with git (default: built when missing)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--commits", type=int, default=2_000)
    ap.add_argument("--vcpus", default="2")
    ap.add_argument("--memory", default="2G")
    ap.add_argument("--cache-dir")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    hardware = ["--vcpus", args.vcpus, "--memory", args.memory]
    repo = cached_repo(args.files, args.commits)
    facts = repo_facts(repo)
    print(f"repo: {facts}", file=sys.stderr, flush=True)

    def terminate(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, terminate)
    rows: dict[str, list[dict]] = {k: [] for k in KINDS}
    sizes: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="banger-bench-ws-") as tmp:
        bench = Bench(Path(tmp), args.cache_dir)
        try:
            ensure_git_image(bench, args.image, Path(tmp))
            took, proc = bench.banger("vm", "create", args.image, "--name", "warm", *hardware)
            first = {"create": round(took, 2), "made_snapshot": "snapshot: booting" in proc.stderr}
            bench.banger("vm", "rm", "--force", "warm")
            for i in range(args.rounds):
                order = KINDS[i % len(KINDS):] + KINDS[:i % len(KINDS)]
                for kind in order:
                    name = f"ws-{kind}-{i}"
                    row = vm_run(bench, repo, args.image, name, kind, hardware)
                    if kind not in ("cold",) and kind not in sizes:
                        sizes[kind] = guest_sizes(bench, name)
                    bench.banger("vm", "rm", "--force", name)
                    rows[kind].append(row)
                    print(f"round {i} {kind:<12} total {row['total']:6.2f} s = create {row['create']:5.2f} + host copy "
                          f"{row['host_copy']:5.2f} + guest extract {row['guest_extract']:5.2f} + command "
                          f"{row['command']:5.2f}  ({row['copy_bytes'] / 2**20:.1f} MiB, {row['copy_what']}; "
                          f"load {row['load']:.1f})", file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            raise SystemExit(130)
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            bench.cleanup()
    summary: dict = {"repo": facts, "first_create": first, "vcpus": args.vcpus, "memory": args.memory}
    for kind, got in rows.items():
        summary[kind] = {"copy_bytes": got[0]["copy_bytes"], "copy": got[0]["copy_what"], **sizes.get(kind, {}),
                         **{part: {"median": round(statistics.median(r[part] for r in got), 2),
                                   "range": [round(min(r[part] for r in got), 2), round(max(r[part] for r in got), 2)]}
                            for part in ("total", "create", "host_copy", "guest_extract", "command")}}
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    MiB = 2**20
    print(f"repo: {facts['files']} files, {facts['commits']} commits; host .git {facts['git_dir_bytes'] / MiB:.1f} MiB, "
          f"work tree {facts['work_tree_bytes'] / MiB:.1f} MiB")
    print(f"first vm create (snapshot {'made' if first['made_snapshot'] else 'cached'}): {first['create']:.2f} s")
    for kind in ("restore", "restore-full"):
        s = summary[kind]
        print(f"{kind:>13}: sends {s['copy_bytes'] / MiB:.1f} MiB ({s['copy']}); guest .git "
              f"{s.get('guest_git_dir_bytes', 0) / MiB:.1f} MiB, tree {s.get('guest_work_tree_bytes', 0) / MiB:.1f} MiB, "
              f"{s.get('guest_commits')} commits")
    for kind, got in rows.items():
        print(f"{kind:>13}: vm run -> answer {spread([r['total'] for r in got])}")
        for part in ("create", "host_copy", "guest_extract", "command"):
            print(f"{'':>15}{part:<14}{spread([r[part] for r in got])}")


if __name__ == "__main__":
    main()
