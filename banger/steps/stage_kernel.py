"""Step 6, stage-kernel: put the chosen kernel bundle beside the rootfs.

Keyed by the injected image and the bundle's manifest digest. The rootfs is a sparse copy of the
image; when it lacks /lib/modules/<version> the bundle's modules are written into it with one
batched debugfs run (owned by root, 0644 files / 0755 dirs), growing the filesystem first when it
is too small for them. vmlinuz, vmlinux and initrd.img are ingested as they are (after checking
them against the bundle manifest).

Injected modules make systemd's kmod-static-nodes.service run at boot (it is skipped while
/lib/modules/<version> has no modules.devname); it runs `kmod static-nodes`, and in an image
without kmod (a minimal Debian has only libkmod, which udev uses) it fails and the system boots
`degraded`. So when the step injects modules into an image that has the unit but not the program
it runs, it masks the unit (a link /etc/systemd/system/kmod-static-nodes.service -> /dev/null).
Nothing is lost: the static nodes it lists only serve to load their module with modprobe (kmod)
when opened, and the image has none.

A bundle without modules (one `banger kernel build` made: everything built in, no initramfs)
has nothing to put into the rootfs: the step's "rootfs" output is then the injected image itself,
the same store object (no copy, no fsck); only the boot files are staged.

Outputs: {"rootfs", "kernel" (vmlinuz, else vmlinux), "vmlinux", "initrd"}; the last two only
when the bundle has them.
"""
from __future__ import annotations

import functools
import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from banger.core import config, fsutil
from banger.rootfs import debugfs, e2fs
from banger.core.errors import BuildError
from banger.core.procs import dies_with_parent
from banger.engine import tasks as engine
from banger.kernel import bundle as kernel_bundle, suggest
from banger.kernel.bundle import Bundle, KernelError
from banger.engine.spec import BuildSpec

VERSION = "3"  # 3: masks kmod-static-nodes.service in images without kmod
NOT_FOUND = "File not found by ext2_lookup"
STATIC_NODES_UNIT = "kmod-static-nodes.service"
UNIT_DIRS = ("/usr/lib/systemd/system", "/lib/systemd/system")
MASK_DIR = "/etc/systemd/system"
PROGRAM_DIRS = ("/usr/bin", "/bin", "/usr/sbin", "/sbin")  # where a bare ExecStart= name is looked up


@dataclass
class StagedKernel:
    rootfs: Path
    kernel: Path
    vmlinux: Path | None
    initrd: Path | None
    injected_files: int = 0
    grown_by: int = 0  # bytes added to the filesystem to make room for the modules
    masked: tuple[str, ...] = ()  # units masked because the image cannot run them


# ---- the work ----------------------------------------------------------------------------------
def stage(image: Path, bundle: Bundle, workdir: Path, log: Callable[[str], None] = lambda m: None) -> StagedKernel:
    """Copy `image` to workdir/rootfs.img (adding the bundle's modules if it lacks them) and copy
    the bundle's boot files beside it, checked against the manifest. A bundle without modules
    leaves the image alone: `rootfs` is then `image` itself."""
    try:
        bundle.verify()
    except KernelError as exc:
        raise BuildError(str(exc)) from None
    rootfs = workdir / "rootfs.img" if bundle.modules_root is not None else image
    if bundle.modules_root is not None:
        fsutil.copy_sparse(image, rootfs)
    result = StagedKernel(rootfs, kernel=workdir / "kernel", vmlinux=None, initrd=None)
    shutil.copyfile(bundle.kernel, result.kernel)
    if bundle.file("vmlinux"):
        result.vmlinux = workdir / "vmlinux"
        shutil.copyfile(bundle.path / "vmlinux", result.vmlinux)
    if bundle.file("initrd.img"):
        result.initrd = workdir / "initrd.img"
        shutil.copyfile(bundle.path / "initrd.img", result.initrd)
    for copy, name in ((result.kernel, bundle.kernel.name), (result.vmlinux, "vmlinux"), (result.initrd, "initrd.img")):
        if copy is not None and kernel_bundle.sha256_file(copy) != bundle.manifest.files[name]:
            raise BuildError(f"kernel {bundle.name}: {name} changed while staging; run the build again")
    if bundle.modules_root is not None:
        modules_dir = _modules_dir(rootfs)
        version_dir = f"{modules_dir.path}/{bundle.version}"
        if modules_dir.exists and _exists(rootfs, version_dir):
            log(f"image already has {version_dir}; not injecting modules")
        else:
            result.grown_by = _make_room(rootfs, bundle.modules_root)
            result.injected_files = inject_modules(rootfs, bundle.modules_root, modules_dir, version_dir)
            log(f"injected {result.injected_files} module files into {version_dir}")
            if mask_static_nodes_unit(rootfs):
                result.masked = (STATIC_NODES_UNIT,)
                log(f"masked {STATIC_NODES_UNIT}: the image has no `kmod` to run it")
    return result


def mask_static_nodes_unit(image: Path) -> bool:
    """Mask STATIC_NODES_UNIT when the image has the unit but not the program its ExecStart= runs;
    True if it did. An image that already has an /etc/systemd/system entry for the unit (a mask
    or an admin's own unit) is left alone."""
    mask = f"{MASK_DIR}/{STATIC_NODES_UNIT}"
    units = [f"{d}/{STATIC_NODES_UNIT}" for d in UNIT_DIRS]
    parents = ("/etc", "/etc/systemd", MASK_DIR)
    blocks = _stat(image, [mask, *units, *parents])  # one debugfs run for every path known up front
    if _found(blocks[0]):
        return False
    unit = next((path for path, block in zip(units, blocks[1:])
                 if any("Type: regular" in line for line in block.output)), None)
    if unit is None:  # no systemd, or a unit this step does not know how to read
        return False
    programs = _exec_start_programs(debugfs.run(image, [f"cat {debugfs.quote(unit)}"])[0].output)
    if not programs or any(_found(b) for b in _stat(image, programs)):
        return False
    commands: list[str] = []
    for d, block in zip(parents, blocks[1 + len(units):]):
        if not _found(block):
            commands += [f"mkdir {debugfs.quote(d)}",
                         *(f"sif {debugfs.quote(d)} {field}" for field in ("mode 040755", "uid 0", "gid 0"))]
    q = debugfs.quote(mask)
    commands += [f"symlink {q} /dev/null", f"sif {q} uid 0", f"sif {q} gid 0"]
    try:
        e2fs.run(image, commands, write=True)
    except e2fs.E2fsError as exc:
        raise BuildError(f"masking {STATIC_NODES_UNIT} failed: {exc}") from None
    return True


def _exec_start_programs(unit_text: list[str]) -> list[str]:
    """Where the program of a unit's (first) ExecStart= may be: its path, or for a bare name the
    usual bin dirs; [] when there is no ExecStart=."""
    for line in unit_text:
        key, sep, value = line.strip().partition("=")
        if sep and key.strip() == "ExecStart" and value.strip():
            program = value.split()[0].lstrip("-@:+!|")  # systemd.service(5)'s prefixes
            return [program] if program.startswith("/") else [f"{d}/{program}" for d in PROGRAM_DIRS]
    return []


@dataclass(frozen=True)
class ModulesDir:
    path: str  # "/lib/modules" or, on merged-/usr images, "/usr/lib/modules"
    exists: bool
    make_lib: bool = False  # /lib itself is missing


def _stat(image: Path, paths: list[str]) -> list[debugfs.Block]:
    return debugfs.run(image, [f"stat {debugfs.quote(p)}" for p in paths])


def _found(block: debugfs.Block) -> bool:
    """Whether a `stat` block of _stat found its path."""
    return not any(NOT_FOUND in line for line in block.output)


def _exists(image: Path, path: str) -> bool:
    return _found(_stat(image, [path])[0])


def _modules_dir(image: Path) -> ModulesDir:
    """Where /lib/modules really is (debugfs does not follow a final symlink when creating)."""
    lib = _stat(image, ["/lib"])[0].output
    if any(NOT_FOUND in line for line in lib):
        return ModulesDir("/lib/modules", exists=False, make_lib=True)
    base = "/lib"
    if any("Type: symlink" in line for line in lib):
        target = next((m.group(1) for line in lib if (m := re.search(r'Fast link dest: "(.*)"', line))), None)
        if not target or ".." in target.split("/"):
            raise BuildError("the image's /lib is a symlink banger cannot follow; "
                                    "make it a directory or a link like usr/lib")
        base = target if target.startswith("/") else f"/{target}"
        if not _exists(image, base):
            raise BuildError(f"the image's /lib points to {base}, which does not exist")
    path = f"{base.rstrip('/')}/modules"
    return ModulesDir(path, exists=_exists(image, path))


def _fs_stats(image: Path) -> dict[str, int]:
    stats: dict[str, int] = {}
    for line in debugfs.run(image, ["stats"])[0].output:
        key, sep, value = line.partition(":")
        if sep and value.strip().isdigit():
            stats[key.strip()] = int(value.strip())
    return stats


def _make_room(image: Path, modules_root: Path) -> int:
    """Grow the image (resize2fs) when it has too few free blocks or inodes for the modules."""
    st = _fs_stats(image)
    bs = st["Block size"]
    files = dirs = blocks = 0
    for dirpath, _dirnames, fnames in os.walk(modules_root):
        dirs += 1
        for fname in fnames:
            p = os.path.join(dirpath, fname)
            if os.path.isfile(p) and not os.path.islink(p):
                files += 1
                blocks += math.ceil(os.path.getsize(p) / bs) + 1  # +1: extent/indirect overhead
    need_blocks = int((blocks + dirs) * 1.05) + 256
    need_inodes = files + dirs + 16
    short_blocks = max(0, need_blocks - st["Free blocks"])
    short_inodes = max(0, need_inodes - st["Free inodes"])
    if not short_blocks and not short_inodes:
        return 0
    groups_for_inodes = math.ceil(short_inodes / st["Inodes per group"]) if short_inodes else 0
    extra = max(short_blocks, groups_for_inodes * st["Blocks per group"]) * bs
    extra = -(-extra // (1 << 20)) * (1 << 20)
    new_size = image.stat().st_size + extra
    os.truncate(image, new_size)
    proc = subprocess.run(["resize2fs", str(image), f"{new_size // 1024}K"], capture_output=True, text=True,
                          env=e2fs.env(), preexec_fn=dies_with_parent())
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BuildError(f"cannot grow the rootfs to fit the kernel modules: {detail}")
    return extra


def inject_modules(image: Path, modules_root: Path, modules_dir: ModulesDir, version_dir: str) -> int:
    """Write modules_root (…/modules/<ver>) to version_dir in the image: one debugfs batch."""
    commands: list[str] = []

    def mkdir(path: str) -> None:
        commands.extend([f"mkdir {debugfs.quote(path)}", f"sif {debugfs.quote(path)} mode 040755",
                         f"sif {debugfs.quote(path)} uid 0", f"sif {debugfs.quote(path)} gid 0"])

    if modules_dir.make_lib:
        mkdir("/lib")
    if not modules_dir.exists:
        mkdir(modules_dir.path)
    count = 0
    for dirpath, dirnames, fnames in os.walk(modules_root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, modules_root)
        target = version_dir if rel == "." else f"{version_dir}/{rel}"
        mkdir(target)
        files = sorted(f for f in fnames
                       if os.path.isfile(os.path.join(dirpath, f)) and not os.path.islink(os.path.join(dirpath, f)))
        if files:
            commands.append(f"cd {debugfs.quote(target)}")
        for fname in files:
            name = debugfs.quote(fname)
            commands.extend([f"write {debugfs.quote(os.path.join(dirpath, fname))} {name}",
                             f"sif {name} mode 0100644", f"sif {name} uid 0", f"sif {name} gid 0"])
            count += 1
    try:
        e2fs.run(image, commands, write=True)
    except e2fs.E2fsError as exc:
        raise BuildError(f"injecting kernel modules failed: {exc}") from None
    return count


# ---- doit wiring -------------------------------------------------------------------------------
def choose_bundle(build: engine.Build, spec: BuildSpec) -> Bundle:
    """The bundle for kernel= (or the default), remembered in build.context["kernel"]; the pipeline
    calls this before any step so a missing kernel is reported before the image is resolved."""
    if build.context.get("kernel") is None:
        dirs = build.context.get("dirs") or config.default_dirs()
        try:
            build.context["kernel"] = suggest.resolve(dirs, spec.kernel)
        except KernelError as exc:
            raise BuildError(str(exc)) from None
    return build.context["kernel"]


@functools.lru_cache(maxsize=1)
def tasks(build: engine.Build, spec: BuildSpec) -> Iterator[dict]:
    bundle = choose_bundle(build, spec)

    def work(run: engine.StepRun) -> dict[str, str]:
        """Stage the kernel bundle beside the rootfs (injecting its modules if needed)."""
        image = run.inputs["image"]
        staged = stage(run.path(image), bundle, run.stage, build.log)
        run.info.update({"bundle": bundle.name, "kernel_version": bundle.version,
                         "injected_module_files": staged.injected_files, "grown_by": staged.grown_by,
                         "masked_units": list(staged.masked)})
        if staged.rootfs == run.path(image):  # nothing went into it: the same store object
            outputs = {"rootfs": image}
        else:
            e2fs.fsck(staged.rootfs)
            outputs = {"rootfs": run.store.ingest_file(staged.rootfs)}
        outputs["kernel"] = run.store.ingest_file(staged.kernel)
        if staged.vmlinux is not None:
            outputs["vmlinux"] = run.store.ingest_file(staged.vmlinux)
        if staged.initrd is not None:
            outputs["initrd"] = run.store.ingest_file(staged.initrd)
        return outputs

    yield engine.step_task(
        build, name="stage-kernel", version=VERSION, work=work,
        inputs=lambda: {"image": build.output("inject", "image"), "kernel": bundle.digest},
        tools=lambda: {"e2fsprogs": e2fs.version("debugfs")}, deps=("inject",),
        doc="stage the kernel bundle beside the rootfs")
