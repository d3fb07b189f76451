"""Kernel bundles from Debian kernel packages (`linux-image-*.deb`), fetched with the host's apt.

`kernel pull debian:cloud-amd64` asks apt which versioned package the meta package
`linux-image-cloud-amd64` currently depends on, downloads it with `apt-get download` (so the
mirror is whatever the host's apt sources say), and turns it into a complete bundle: vmlinuz,
vmlinux extracted from it, modules/<version> (depmod'ed) and a generated initramfs.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from . import config
from .kernel_bundle import Bundle, KernelError, Log, Staged, commit, complete, kernels_dir, staging, validate_name

FLAVOUR_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    if shutil.which(argv[0]) is None:
        raise KernelError(f"{argv[0]} not found; {what} needs a Debian-like host with apt/dpkg")
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith(("E:", "dpkg-deb"))]
        detail = (lines or proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise KernelError(f"`{' '.join(argv)}` failed: {detail}")
    return proc.stdout


def apt_download(package: str, dest_dir: Path) -> Path:
    """`apt-get download PACKAGE` into dest_dir; the path of the .deb."""
    before = set(dest_dir.glob("*.deb"))
    try:
        _run(["apt-get", "download", package], "downloading packages", cwd=dest_dir)
    except KernelError as exc:
        raise KernelError(f"{exc}; check the host's apt sources (apt-get update)") from None
    new = [p for p in dest_dir.glob("*.deb") if p not in before and p.name.startswith(package + "_")]
    if len(new) != 1:
        raise KernelError(f"apt-get download {package} did not leave one .deb in {dest_dir}")
    return new[0]


def deb_fields(deb: Path) -> dict[str, str]:
    out = _run(["dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture"], "reading packages")
    fields = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def deb_extract(deb: Path, dest: Path) -> None:
    """`dpkg-deb -x` (it refuses unsafe paths itself) into a fresh directory."""
    dest.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(dest)], "unpacking packages")


def meta_package(flavour: str) -> str:
    if not FLAVOUR_RE.match(flavour):
        raise KernelError(f"invalid Debian kernel flavour {flavour!r}; use e.g. debian:cloud-amd64")
    return f"linux-image-{flavour}"


def resolve_image_package(flavour: str) -> str:
    """The versioned package the meta package's candidate version depends on."""
    meta = meta_package(flavour)
    out = _run(["apt-cache", "depends", meta], "resolving Debian kernels")
    pattern = re.compile(rf"^\s*Depends:\s*(linux-image-\S+-{re.escape(flavour)})\s*$")
    for line in out.splitlines():
        m = pattern.match(line)
        if m:
            return m.group(1)
    # fall back to the Depends: field of `apt-cache show` (first stanza = candidate)
    show = _run(["apt-cache", "show", "--no-all-versions", meta], "resolving Debian kernels")
    for line in show.splitlines():
        if line.startswith("Depends:"):
            for dep in line[len("Depends:"):].split(","):
                name = dep.strip().split(" ", 1)[0]
                if name.startswith("linux-image-") and name.endswith(flavour):
                    return name
    raise KernelError(f"apt knows no linux-image-*-{flavour} behind {meta}; "
                      "check the host's apt sources (apt-get update)")


def package_info(package: str) -> dict[str, str]:
    """Version and download Size of a package's candidate (for `kernel list --available`)."""
    out = _run(["apt-cache", "show", "--no-all-versions", package], "querying apt")
    info = {}
    for line in out.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key in ("Version", "Size", "Package"):
            info[key] = value.strip()
        if not line.strip():
            break
    return info


def stage_deb(deb: Path, work: Path) -> Staged:
    """Unpack a kernel .deb and lay its kernel and modules out as a bundle in work/bundle."""
    fields = deb_fields(deb)
    tree = work / "deb"
    deb_extract(deb, tree)
    kernels = sorted((tree / "boot").glob("vmlinuz-*")) if (tree / "boot").is_dir() else []
    if not kernels:
        raise KernelError(f"{deb.name} has no boot/vmlinuz-*; is it a linux-image package?")
    if len(kernels) > 1:
        raise KernelError(f"{deb.name} holds several kernels: {[k.name for k in kernels]}")
    version = kernels[0].name[len("vmlinuz-"):]
    bundle = work / "bundle"
    bundle.mkdir()
    kernels[0].rename(bundle / "vmlinuz")
    for base in (tree / "lib" / "modules", tree / "usr" / "lib" / "modules"):
        if (base / version).is_dir():
            (bundle / "modules").mkdir()
            (base / version).rename(bundle / "modules" / version)
            for link in ("build", "source"):  # point into linux-headers, which we do not ship
                p = bundle / "modules" / version / link
                if p.is_symlink():
                    p.unlink()
            break
    info = {"package": fields.get("Package", ""), "package_version": fields.get("Version", "")}
    arch = fields.get("Architecture", "")
    return Staged(bundle, version, arch=arch, distro="debian", info=info)


def import_deb(dirs: config.Dirs, name: str, deb: Path, force: bool = False,
               busybox: Path | None = None, source: str | None = None, log: Log | None = None) -> Bundle:
    validate_name(name)
    deb = Path(deb)
    if not deb.is_file():
        raise KernelError(f"no such package file {deb}")
    if (kernels_dir(dirs) / name).exists() and not force:
        raise KernelError(f"kernel {name!r} already exists; use --force to replace it")
    with staging(dirs, name) as work:
        staged = stage_deb(deb, work)
        complete(staged, busybox, log)
        return commit(dirs, name, staged, source=source or f"deb:{deb.name}", force=force)


def pull(dirs: config.Dirs, flavour: str, name: str | None = None, force: bool = False,
         busybox: Path | None = None, log: Log | None = None) -> Bundle:
    """`kernel pull debian:<flavour>`: the current linux-image-*-<flavour> as bundle debian-<flavour>."""
    log = log or (lambda msg: None)
    name = validate_name(name or f"debian-{flavour}")
    package = resolve_image_package(flavour)
    if (kernels_dir(dirs) / name).exists() and not force:
        from .kernel_bundle import load

        have = load(dirs, name).manifest.info.get("package")
        state = "the current one" if have == package else f"{have}; apt now offers {package}"
        raise KernelError(f"kernel {name!r} is already pulled ({state}); use --force to pull it again")
    log(f"downloading {package} with apt-get")
    with staging(dirs, name) as work:
        deb = apt_download(package, work)
        staged = stage_deb(deb, work)
        complete(staged, busybox, log)
        return commit(dirs, name, staged, source=f"debian:{flavour}", force=force)
