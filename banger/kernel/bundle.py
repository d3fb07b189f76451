"""Kernel bundles: `<state>/kernels/<name>/` holding a kernel, optional initrd and modules.

    <name>/manifest.json   name, distro, arch, version, sha256 of every file, source, imported_at
    <name>/vmlinuz         bzImage (QEMU)            } at least one of the two
    <name>/vmlinux         uncompressed ELF (Firecracker on x86_64)
    <name>/initrd.img      optional initramfs
    <name>/modules/<ver>/  optional modules, depmod'ed (modules.dep etc. present)
    <name>/config          optional: the .config of a kernel `banger kernel build` compiled

Default: config.json's "default_kernel"; else the newest bundle `kernel build` made (a kernel
with everything built in, booting without initramfs); else the Debian cloud kernel (FALLBACK).

Bundles are assembled in `<kernels>/.staging/` (same filesystem), hashed, then renamed into
place, so a failed import or pull leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from banger.core import config
from banger.kernel import kmod, vmlinux
from banger.core import digest as dg
from banger.kernel.errors import KernelError, KernelNotInstalled
from banger.core.fsutil import atomic_write, remove_tree

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
DEFAULT_KERNEL = "debian-cloud-amd64"  # what `kernel pull debian:cloud-amd64` installs
DEFAULT_SOURCE = "debian:cloud-amd64"
KERNEL_FILES = ("vmlinuz", "vmlinux")
FILES = ("vmlinuz", "vmlinux", "initrd.img", "config")
VERIFIED_STAMP = ".verified"  # stat() listing of the files at the last full verification
MANIFEST = "manifest.json"
METADATA = "metadata.json"
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}$")  # also a path component

Log = Callable[[str], None]


def validate_name(name: str) -> str:
    if not NAME_RE.fullmatch(name or ""):
        raise KernelError(f"invalid kernel name {name!r}: use 1-64 lowercase letters, digits, "
                          "'.', '_' and '-', starting with a letter or digit")
    return name


def kernels_dir(dirs: config.Dirs) -> Path:
    return dirs.state / "kernels"


def default_name(dirs: config.Dirs) -> str:
    """config.json's "default_kernel", else the newest built bundle, else DEFAULT_KERNEL."""
    chosen = config.load_config(dirs).get("default_kernel")
    if chosen:
        return str(chosen)
    built = newest_built(dirs)
    return built.name if built is not None else DEFAULT_KERNEL


def newest_built(dirs: config.Dirs) -> "Bundle | None":
    """The most recently installed bundle `banger kernel build` made, if any."""
    built = [b for b in list_bundles(dirs) if b.built]
    return max(built, key=lambda b: (b.manifest.imported_at, b.name)) if built else None


@dataclass
class Manifest:
    name: str
    version: str
    arch: str
    distro: str
    source: str
    imported_at: str
    files: dict[str, str]  # "vmlinuz" | "vmlinux" | "initrd.img" | "modules" -> "sha256:..."
    sizes: dict[str, int] = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # provenance: package, vmlinux compression, initrd modules

    @classmethod
    def from_json(cls, data: dict) -> "Manifest":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        missing = [k for k in ("name", "version", "files") if k not in known]
        if missing:
            raise KernelError(f"manifest lacks {', '.join(missing)}")
        known.setdefault("arch", "unknown")
        known.setdefault("distro", "unknown")
        known.setdefault("source", "unknown")
        known.setdefault("imported_at", "")
        return cls(**known)


@dataclass
class Bundle:
    path: Path
    manifest: Manifest
    digest: str  # sha256 of manifest.json: the identity a build step is keyed by

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    def file(self, name: str) -> Path | None:
        return self.path / name if name in self.manifest.files else None

    @property
    def kernel(self) -> Path:
        """What QEMU boots: the bzImage if there is one, else the ELF."""
        found = self.file("vmlinuz") or self.file("vmlinux")
        assert found is not None
        return found

    @property
    def built(self) -> bool:
        """Made by `banger kernel build`: everything built in, no modules, no initramfs."""
        return bool(self.manifest.info.get("built")) and "modules" not in self.manifest.files

    @property
    def modules_root(self) -> Path | None:
        return self.path / "modules" / self.version if "modules" in self.manifest.files else None

    @property
    def size(self) -> int:
        return sum(self.manifest.sizes.values())

    def verify(self, full: bool = False) -> None:
        """Re-hash every file; raise naming the first one that changed. Skipped (unless `full`)
        when no file's stat() changed since the last full check: as in the store, ctime cannot
        be set back by a write, so any modification forces the rehash."""
        stamp = self.path / VERIFIED_STAMP
        now = self._stat_listing()
        if not full:
            with contextlib.suppress(FileNotFoundError):
                if stamp.read_text() == now:
                    return
        self._verify_hashes()
        with contextlib.suppress(OSError):  # a read-only bundle just gets rehashed next time
            atomic_write(stamp, now.encode())

    def _stat_listing(self) -> str:
        paths = [self.path / f for f in self.manifest.files if f != "modules"]
        if "modules" in self.manifest.files:
            paths += sorted(Path(d) / f for d, _, files in os.walk(self.path / "modules") for f in files)
        lines = []
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                st = p.lstat()
                lines.append(f"{p.relative_to(self.path)} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino}")
        return hashlib.sha256(("\n".join(lines)).encode()).hexdigest()

    def _verify_hashes(self) -> None:
        for fname, expected in self.manifest.files.items():
            actual = (modules_digest(self.path / "modules") if fname == "modules"
                      else sha256_file(self.path / fname))
            if actual != expected:
                raise KernelError(f"kernel {self.name}: {fname} does not match its manifest "
                                  f"(damaged?); re-import or `banger kernel pull {self.name} --force`")


# ---- reading ---------------------------------------------------------------------------------
def load(dirs: config.Dirs, name: str) -> Bundle:
    validate_name(name)
    path = kernels_dir(dirs) / name
    try:
        raw = (path / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise KernelError(f"no kernel named {name!r}; run `banger kernel list` to see installed "
                          f"kernels or `banger kernel pull {DEFAULT_SOURCE}`") from None
    try:
        manifest = Manifest.from_json(json.loads(raw))
    except (json.JSONDecodeError, TypeError, KernelError) as exc:
        raise KernelError(f"kernel {name}: broken {path / MANIFEST} ({exc}); "
                          f"remove it with `banger kernel rm {name}`") from None
    return Bundle(path, manifest, "sha256:" + hashlib.sha256(raw).hexdigest())


def list_bundles(dirs: config.Dirs) -> list[Bundle]:
    root = kernels_dir(dirs)
    bundles = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if NAME_RE.fullmatch(entry.name) and (entry / MANIFEST).is_file():
            with contextlib.suppress(KernelError):
                bundles.append(load(dirs, entry.name))
    return bundles


def resolve(dirs: config.Dirs, name: str | None = None) -> Bundle:
    """The bundle named `name`, else the configured default ("default_kernel" in config.json)."""
    chosen = name or default_name(dirs)
    try:
        return load(dirs, chosen)
    except KernelError as exc:
        if (kernels_dir(dirs) / chosen / MANIFEST).exists() or not NAME_RE.fullmatch(chosen):
            raise
        if chosen == DEFAULT_KERNEL:
            raise KernelNotInstalled(f"kernel {chosen!r} is not installed; run `banger kernel pull "
                                     f"{DEFAULT_SOURCE}` or `banger kernel list` to pick another (kernel=NAME)",
                                     chosen) from exc
        # not `kernel pull {chosen}`: the catalog may not have it (kernel.suggest names what it has)
        raise KernelNotInstalled(f"kernel {chosen!r} is not installed; `banger kernel list` shows the installed "
                                 "ones (kernel=NAME), `banger kernel list --available` those to pull", chosen) from exc


def remove(dirs: config.Dirs, name: str) -> None:
    validate_name(name)
    path = kernels_dir(dirs) / name
    if not path.is_dir():
        raise KernelError(f"no kernel named {name!r}; run `banger kernel list`")
    with lock(dirs, name):
        trash = Path(tempfile.mkdtemp(prefix=f"rm-{name}-", dir=_staging_root(dirs)))
        os.rename(path, trash / name)
        remove_tree(trash)


# ---- hashing ---------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    return dg.of_file(path, "sha256")[0]


def modules_digest(root: Path) -> str:
    """sha256 over the sorted listing "<relpath> <sha256>" of every regular file under root."""
    lines = []
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        for fname in files:
            full = Path(dirpath) / fname
            if full.is_file() and not full.is_symlink():
                lines.append(f"{full.relative_to(root)} {sha256_file(full)}\n")
    return "sha256:" + hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


def tree_size(root: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(root) for f in files)


# ---- writing ---------------------------------------------------------------------------------
def _staging_root(dirs: config.Dirs) -> Path:
    root = kernels_dir(dirs) / ".staging"
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def staging(dirs: config.Dirs, name: str) -> Iterator[Path]:
    """A private directory beside the bundles (same filesystem), removed whatever happens."""
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=_staging_root(dirs)))
    try:
        yield path
    finally:
        remove_tree(path)


@contextlib.contextmanager
def lock(dirs: config.Dirs, name: str) -> Iterator[None]:
    locks = kernels_dir(dirs) / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class Staged:
    """A bundle being assembled in `dir` (files named as in the bundle)."""
    dir: Path
    version: str
    arch: str = ""
    distro: str = "unknown"
    info: dict = field(default_factory=dict)
    expected: dict[str, str] = field(default_factory=dict)  # sha256s an imported manifest promised


def complete(staged: Staged, busybox: Path | None = None, log: Log | None = None) -> None:
    """Add what a bootable bundle lacks: vmlinux from the bzImage, an initramfs for the modules."""
    log = log or (lambda msg: None)
    d = staged.dir
    if (d / "vmlinuz").is_file() and not (d / "vmlinux").exists() and vmlinux.is_bzimage(d / "vmlinuz"):
        try:
            staged.info["vmlinux_from"] = vmlinux.extract(d / "vmlinuz", d / "vmlinux")
        except vmlinux.VmlinuxError as exc:
            raise KernelError(str(exc)) from None
        log(f"extracted vmlinux ({staged.info['vmlinux_from']} payload)")
    modules_root = d / "modules" / staged.version
    if not (d / "initrd.img").exists() and modules_root.is_dir():
        from banger.kernel import initrd  # only when one is generated: a CLI start needs none of it

        try:
            if busybox is None:
                fetch_dir = Path(tempfile.mkdtemp(prefix="busybox-", dir=d.parent))
                busybox = initrd.fetch_busybox(fetch_dir)
            result = initrd.build(modules_root, busybox, d / "initrd.img")
        except (initrd.InitrdError, kmod.KmodError) as exc:
            raise KernelError(f"cannot build the initramfs: {exc}") from None
        staged.info["initrd"] = {"generated": True, "modules": result.modules}
        log(f"generated initrd.img ({result.size} bytes, {len(result.modules)} modules)")
    if not staged.arch:
        staged.arch = _arch_of(d)


def commit(dirs: config.Dirs, name: str, staged: Staged, source: str, force: bool = False) -> Bundle:
    """Hash, depmod and describe a staged bundle, then rename it into place atomically."""
    validate_name(name)
    d = staged.dir
    if not any((d / k).is_file() for k in KERNEL_FILES):
        raise KernelError("no kernel (vmlinuz or vmlinux) found to import")
    modules = d / "modules"
    if modules.exists():
        subdirs = [p.name for p in modules.iterdir()]
        if subdirs != [staged.version]:
            raise KernelError(f"modules/ must hold exactly {staged.version}/, found {subdirs}")
        if "modules" in staged.expected and modules_digest(modules) != staged.expected["modules"]:
            raise KernelError("modules/ does not match the sha256 in the imported manifest; "
                              "the source is damaged or was modified")
        depmod(modules, staged.version)
    files: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for fname in FILES:
        if (d / fname).is_file():
            files[fname] = sha256_file(d / fname)
            sizes[fname] = (d / fname).stat().st_size
            os.chmod(d / fname, 0o644)
    if modules.exists():
        files["modules"] = modules_digest(modules)
        sizes["modules"] = tree_size(modules)
    for fname, want in staged.expected.items():
        if fname in files and fname != "modules" and files[fname] != want:
            raise KernelError(f"{fname} does not match the sha256 in the imported manifest; "
                              "the source is damaged or was modified")
    manifest = Manifest(name=name, version=staged.version, arch=staged.arch or "unknown",
                        distro=staged.distro, source=source,
                        imported_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                        files=files, sizes=sizes, info=staged.info)
    atomic_write(d / MANIFEST, json.dumps(asdict(manifest), indent=1, sort_keys=True).encode() + b"\n")
    os.chmod(d, 0o755)
    dest = kernels_dir(dirs) / name
    with lock(dirs, name):
        if dest.exists() and not force:
            raise KernelError(f"kernel {name!r} already exists; use --force to replace it "
                              f"or `banger kernel rm {name}`")
        trash = None
        if dest.exists():
            trash = Path(tempfile.mkdtemp(prefix=f"old-{name}-", dir=_staging_root(dirs)))
            os.rename(dest, trash / name)
        os.rename(d, dest)
        if trash is not None:
            remove_tree(trash)
    return load(dirs, name)


def depmod(modules: Path, version: str) -> None:
    """Run `depmod -b` over modules/<version> (through a lib/modules symlink it expects)."""
    if shutil.which("depmod") is None and not Path("/sbin/depmod").exists():
        raise KernelError("depmod not found; install kmod")
    exe = shutil.which("depmod") or "/sbin/depmod"
    with tempfile.TemporaryDirectory(prefix="depmod-") as base:
        (Path(base) / "lib").mkdir()
        (Path(base) / "lib" / "modules").symlink_to(modules.resolve())
        proc = subprocess.run([exe, "-a", "-b", base, version], capture_output=True, text=True)
    if proc.returncode != 0:
        raise KernelError(f"depmod failed for {version}: {proc.stderr.strip().splitlines()[-1:]}")


def _arch_of(d: Path) -> str:
    machines = {62: "amd64", 183: "arm64", 3: "386", 243: "riscv64"}
    if (d / "vmlinux").is_file():
        with contextlib.suppress(vmlinux.VmlinuxError):
            return machines.get(vmlinux.elf_machine(d / "vmlinux"), "unknown")
    if (d / "vmlinuz").is_file() and vmlinux.is_bzimage(d / "vmlinuz"):
        return "amd64"
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def summary(bundle: Bundle, default: str) -> dict:
    """What `banger kernel list --json` (and `banger ui`) show of an installed bundle."""
    m = bundle.manifest
    role = "default" if m.name == default else "fallback" if m.name == DEFAULT_KERNEL else ""
    return {"name": m.name, "version": m.version, "arch": m.arch, "distro": m.distro,
            "source": m.source, "imported_at": m.imported_at, "size": bundle.size,
            "files": sorted(m.files), "default": m.name == default, "role": role,
            "built": bundle.built, "path": str(bundle.path), "digest": bundle.digest}
