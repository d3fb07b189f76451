"""`kernel import NAME --from DIR`: find a kernel, initrd and modules in a directory and stage them.

A source directory for `kernel import NAME --from DIR` is read as, in order of preference:
  1. DIR/manifest.json: an exported bundle (the layout above); its sha256s are checked;
  2. DIR/metadata.json: {"version", "distro", "arch", "vmlinuz", "vmlinux", "initrd",
     "modules"}: paths relative to DIR (all optional but one kernel);
  3. a bundle layout without manifest (DIR/vmlinuz, DIR/vmlinux, DIR/initrd.img, DIR/modules/<ver>);
  4. a root filesystem: boot/vmlinux-*, boot/vmlinuz-*, boot/initrd.img-* or boot/initramfs-*,
     lib/modules/<newest> (or usr/lib/modules), newest version first.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from banger.core import config
from banger.kernel import vmlinux
from banger.kernel.bundle import (FILES, KERNEL_FILES, MANIFEST, METADATA, VERSION_RE, Bundle, Log, Staged, commit,
                                  complete, kernels_dir, staging, validate_name)
from banger.kernel.errors import KernelError


def _inside(root: Path, rel: str, what: str) -> Path:
    if not isinstance(rel, str) or not rel or os.path.isabs(rel):
        raise KernelError(f"{METADATA}: {what} must be a path relative to the directory, got {rel!r}")
    path = (root / rel).resolve()
    if path != root.resolve() and root.resolve() not in path.parents:
        raise KernelError(f"{METADATA}: {what} {rel!r} points outside the directory")
    if not path.exists():
        raise KernelError(f"{METADATA}: {what} {rel!r} does not exist")
    return path


def _version_key(text: str) -> list:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text)]


def _newest(paths: list[Path], prefix: str) -> Path | None:
    files = [p for p in paths if p.is_file()]
    return max(files, key=lambda p: _version_key(p.name[len(prefix):]), default=None)


def find_sources(src: Path) -> tuple[dict[str, Path], str | None, dict]:
    """(bundle file name -> source path, version or None, metadata) for a source directory."""
    src = Path(src)
    if not src.is_dir():
        raise KernelError(f"{src} is not a directory")
    meta: dict = {}
    found: dict[str, Path] = {}
    version: str | None = None
    if (src / MANIFEST).is_file() or (src / METADATA).is_file():
        fname = MANIFEST if (src / MANIFEST).is_file() else METADATA
        try:
            meta = json.loads((src / fname).read_text())
            if not isinstance(meta, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError) as exc:
            raise KernelError(f"{src / fname} is not valid JSON ({exc})") from None
        meta["_from"] = fname
    if meta.get("_from") == METADATA:
        version = meta.get("version")
        for key, bundle_name in (("vmlinuz", "vmlinuz"), ("vmlinux", "vmlinux"), ("initrd", "initrd.img"),
                                 ("modules", "modules")):
            if meta.get(key):
                found[bundle_name] = _inside(src, meta[key], key)
        if "modules" in found and not version:
            version = found["modules"].name
    elif any((src / k).is_file() for k in KERNEL_FILES):  # a bundle layout (an exported bundle)
        for fname in FILES:
            if (src / fname).is_file():
                found[fname] = src / fname
        version = meta.get("version")
        mods = [p for p in (src / "modules").iterdir() if p.is_dir()] if (src / "modules").is_dir() else []
        if len(mods) > 1:
            raise KernelError(f"{src}/modules holds several versions; keep only one")
        if mods:
            found["modules"] = mods[0]
            version = version or mods[0].name
    else:  # a root filesystem
        boot = src / "boot"
        vmlinuz = _newest(sorted(boot.glob("vmlinuz-*")), "vmlinuz-")
        vmlinux_ = _newest(sorted(boot.glob("vmlinux-*")), "vmlinux-")
        chosen = vmlinuz or vmlinux_
        if chosen is None:
            raise KernelError(f"no kernel in {src}: expected {METADATA}, vmlinuz/vmlinux, "
                              "or boot/vmlinuz-* / boot/vmlinux-*")
        version = chosen.name.split("-", 1)[1]
        if vmlinuz is not None:
            found["vmlinuz"] = vmlinuz
            version = vmlinuz.name[len("vmlinuz-"):]
            if (boot / f"vmlinux-{version}").is_file():
                found["vmlinux"] = boot / f"vmlinux-{version}"
        else:
            found["vmlinux"] = chosen
        for pattern in (f"initrd.img-{version}", f"initramfs-{version}.img", f"initramfs-{version}"):
            if (boot / pattern).is_file():
                found["initrd.img"] = boot / pattern
                break
        for base in (src / "lib" / "modules", src / "usr" / "lib" / "modules"):
            if (base / version).is_dir():
                found["modules"] = base / version
                break
        else:
            candidates = [p for base in (src / "lib" / "modules", src / "usr" / "lib" / "modules")
                          if base.is_dir() for p in base.iterdir() if p.is_dir()]
            if candidates:
                found["modules"] = max(candidates, key=lambda p: _version_key(p.name))
    if not version:
        kernel = found.get("vmlinuz")
        version = vmlinux.kernel_release(kernel) if kernel is not None and vmlinux.is_bzimage(kernel) else None
    if not version:
        raise KernelError(f"cannot tell the kernel version of {src}; add \"version\" to {METADATA}")
    if not VERSION_RE.fullmatch(str(version)):
        raise KernelError(f"kernel version {version!r} is not a plain version string")
    return found, version, meta


def stage_from_dir(src: Path, dest: Path, move: bool = False) -> Staged:
    """Copy (or move, when src is a staging dir of ours) a kernel source dir into a bundle layout."""
    found, version, meta = find_sources(src)
    assert version is not None
    dest.mkdir(parents=True, exist_ok=True)
    for fname, path in found.items():
        if fname == "modules":
            target = dest / "modules" / version
            target.parent.mkdir(exist_ok=True)
            if move:
                os.rename(path, target)
            else:
                copy_modules(path, target)
        elif move:
            os.rename(path, dest / fname)
        else:
            shutil.copyfile(path, dest / fname)
    staged = Staged(dest, version, arch=str(meta.get("arch", "") or ""),
                    distro=str(meta.get("distro", "unknown") or "unknown"))
    if meta.get("_from") == MANIFEST:
        staged.expected = {k: v for k, v in dict(meta.get("files", {})).items() if isinstance(v, str)}
        staged.info = dict(meta.get("info", {})) if isinstance(meta.get("info"), dict) else {}
    return staged


def copy_modules(src: Path, dest: Path) -> None:
    """Copy a modules tree: regular files and directories only (build/source symlinks dropped)."""
    for dirpath, dirnames, files in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for fname in files:
            path = Path(dirpath) / fname
            if path.is_file() and not path.is_symlink():
                shutil.copyfile(path, dest / rel / fname)


def import_dir(dirs: config.Dirs, name: str, src: Path, force: bool = False,
               busybox: Path | None = None, log: Log | None = None) -> Bundle:
    validate_name(name)
    if (kernels_dir(dirs) / name).exists() and not force:
        raise KernelError(f"kernel {name!r} already exists; use --force to replace it")
    with staging(dirs, name) as stage:
        staged = stage_from_dir(Path(src), stage / "bundle")
        complete(staged, busybox, log)
        return commit(dirs, name, staged, source=f"dir:{Path(src).resolve()}", force=force)
