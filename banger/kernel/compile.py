"""Compiling a kernel from Debian's `linux-source-*` package: the toolchain check, the unpacked
source tree, the configure phase and the (resumable) compile, all under `nice -n 19`.

The trees live under `<cache>/kernel-build/` (not in the store: a build tree is big, changes as
make runs, and is what lets a killed compile resume):

    src-<deb digest>/linux-source-X.Y/   the unpacked source, shared by every config (~1.5 GB)
    out-<key>/                           make's O= dir for one source + config + compiler

Both go once the compile's outputs are in the store (the source unless another build is using
it): they are kept only so that a killed or failed compile resumes where make stopped.

Nothing here knows about steps or bundles: banger.steps.kernel_build wires it into doit.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from banger.core.fsutil import remove_tree
from banger.kernel import apt, kconfig
from banger.kernel.errors import KernelError

# program -> the Debian package that has it (one line names all the missing ones)
TOOLS = {"make": "make", "gcc": "gcc", "ld": "binutils", "flex": "flex", "bison": "bison",
         "bc": "bc", "perl": "perl", "xz": "xz-utils", "tar": "tar"}
HEADERS = {"libelf.h": "libelf-dev", "openssl/opensslv.h": "libssl-dev"}
SOURCE_PACKAGE_RE = re.compile(r"^linux-source-\d+\.\d+$")
Log = Callable[[str], None]


def check_toolchain() -> None:
    missing = sorted({pkg for prog, pkg in TOOLS.items() if shutil.which(prog) is None}
                     | {pkg for header, pkg in HEADERS.items() if not _header(header)})
    if missing:
        raise KernelError(f"building a kernel needs {', '.join(missing)}; "
                          f"install them: apt-get install {' '.join(missing)}")


def _header(name: str) -> bool:
    return any((Path(d) / name).is_file() for d in ("/usr/include", "/usr/local/include",
                                                    "/usr/include/x86_64-linux-gnu"))


def compiler_version() -> str:
    """`gcc --version` and `ld --version` first lines: what the compile's output depends on."""
    check_toolchain()
    lines = []
    for prog in ("gcc", "ld", "make"):
        out = subprocess.run([prog, "--version"], capture_output=True, text=True).stdout
        lines.append((out.splitlines() or ["?"])[0].strip())
    return "; ".join(lines)


def source_package(source: str) -> str:
    """--source debian:linux-source-6.1 -> linux-source-6.1."""
    kind, _, package = source.partition(":")
    if kind != "debian" or not SOURCE_PACKAGE_RE.fullmatch(package):
        raise KernelError(f"unknown kernel source {source!r}; use debian:linux-source-X.Y "
                          "(e.g. debian:linux-source-6.1)")
    return package


def candidate_version(package: str) -> str:
    version = apt.package_info(package).get("Version")
    if not version:
        raise KernelError(f"apt knows no {package}; check the host's apt sources (apt-get update)")
    return version


def build_root(cache: Path) -> Path:
    return cache / "kernel-build"


@contextlib.contextmanager
def using_source(cache: Path, deb: Path, deb_digest: str, log: Log) -> Iterator[Path]:
    """The unpacked source of this .deb while the caller uses it (a shared lock: drop_source
    leaves it alone meanwhile)."""
    root = build_root(cache)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{_source_name(deb_digest)}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        try:
            yield source_tree(cache, deb, deb_digest, log)
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def drop_source(cache: Path, deb_digest: str) -> bool:
    """Remove the unpacked source (~1.5 GB for 6.1) unless another build is using it."""
    root = build_root(cache)
    lock = root / f"{_source_name(deb_digest)}.lock"
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            if (root / _source_name(deb_digest)).exists():
                remove_tree(root / _source_name(deb_digest))
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    return True


def _source_name(deb_digest: str) -> str:
    return f"src-{deb_digest.split(':', 1)[-1][:16]}"


def source_tree(cache: Path, deb: Path, deb_digest: str, log: Log) -> Path:
    """The unpacked source of this .deb (unpacked once, renamed into place when complete)."""
    home = build_root(cache) / _source_name(deb_digest)
    done = home / ".unpacked"
    if done.is_file():
        return home / done.read_text().strip()
    log("kernel build: unpacking the source")
    if home.exists():
        remove_tree(home)
    home.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="unpack-", dir=home.parent))
    try:
        apt.deb_extract(deb, work / "deb")
        tarballs = sorted((work / "deb" / "usr" / "src").glob("linux-source-*.tar.*"))
        if len(tarballs) != 1:
            raise KernelError(f"{deb.name} holds no single usr/src/linux-source-*.tar.*; is it a linux-source package?")
        tree = work / "tree"
        tree.mkdir()
        _run(["nice", "-n", "19", "tar", "-xf", str(tarballs[0]), "-C", str(tree)], "unpacking the kernel source")
        tops = [p.name for p in tree.iterdir()]
        if len(tops) != 1 or not (tree / tops[0] / "Makefile").is_file():
            raise KernelError(f"{tarballs[0].name} does not unpack to one kernel source directory")
        (tree / ".unpacked").write_text(tops[0] + "\n")
        try:
            os.rename(tree, home)
        except OSError:
            if not done.is_file():  # not a concurrent build that unpacked it first
                raise

    finally:
        remove_tree(work)
    return home / tops[0]


def configure(src: Path, out: Path, wanted: dict[str, str]) -> str:
    """allnoconfig with the fragment, then olddefconfig, in the O= dir `out`; the .config text.
    Raises naming every option the fragment asked for that Kconfig dropped."""
    out.mkdir(parents=True, exist_ok=True)
    fragment = out / "banger.fragment.config"
    fragment.write_text(kconfig.render(wanted))
    make = ["nice", "-n", "19", "make", "-s", "-C", str(src), f"O={out}"]
    _run([*make, f"KCONFIG_ALLCONFIG={fragment}", "allnoconfig"], "make allnoconfig")
    _run([*make, "olddefconfig"], "make olddefconfig")
    text = (out / ".config").read_text()
    missing = kconfig.check(wanted, text)
    if missing:
        raise KernelError(f"the kernel config lost {len(missing)} option(s) the fragment asks for "
                          f"(unmet dependencies?): {', '.join(missing[:8])}")
    return text


def compile_kernel(src: Path, out: Path, dot_config: str, jobs: int, log: Log) -> tuple[Path, Path]:
    """`make vmlinux bzImage` in `out` (kept between runs: a killed compile resumes); returns the
    paths of vmlinux and arch/x86/boot/bzImage. Progress: a line per ~10% of the objects."""
    out.mkdir(parents=True, exist_ok=True)
    current = out / ".config"
    if not current.is_file() or current.read_text() != dot_config:
        current.write_text(dot_config)
    total = _estimate_objects(out)
    argv = ["nice", "-n", "19", "make", "-C", str(src), f"O={out}", f"-j{jobs}",
            "KBUILD_BUILD_USER=banger", "KBUILD_BUILD_HOST=banger", "vmlinux", "bzImage"]
    log(f"kernel build: compiling with {jobs} job(s) under nice -n 19")
    start = time.monotonic()
    tail: list[str] = []
    done = shown = 0
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "LC_ALL": "C"}) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-20:]
            if line.startswith("  CC "):
                done += 1
                pct = min(99, done * 100 // max(total, 1))
                if pct >= shown + 10:
                    shown = pct - pct % 10
                    log(f"kernel build: compile ~{shown}% ({done} objects, {time.monotonic() - start:.0f} s)")
        code = proc.wait()
    if code != 0:
        errors = [ln for ln in tail if "error" in ln.lower()] or tail[-3:]
        raise KernelError(f"the kernel compile failed (make exit {code}): {errors[-1] if errors else 'no output'}; "
                          f"full tree in {out}")
    vmlinux, bzimage = out / "vmlinux", out / "arch" / "x86" / "boot" / "bzImage"
    for p in (vmlinux, bzimage):
        if not p.is_file():
            raise KernelError(f"make finished but {p} is missing")
    log(f"kernel build: compiled in {time.monotonic() - start:.0f} s")
    return vmlinux, bzimage


def _estimate_objects(out: Path) -> int:
    """Objects left to compile, roughly: the count of a finished build of this config (~1,350 for
    the microvm fragment) minus those already built (a resumed compile)."""
    built = sum(1 for _ in out.rglob("*.o")) if out.is_dir() else 0
    return max(100, 1350 - built)


def kernel_release(out: Path) -> str:
    path = out / "include" / "config" / "kernel.release"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise KernelError(f"make left no {path}") from None


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
        raise KernelError(f"{what} failed: {detail}")
