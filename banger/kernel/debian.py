"""Kernel bundles from Debian kernel packages (`linux-image-*.deb`), fetched with the host's apt.

`kernel pull debian:cloud-amd64` asks apt which versioned package the meta package
`linux-image-cloud-amd64` currently depends on, downloads it with `apt-get download` (so the
mirror is whatever the host's apt sources say), and turns it into a complete bundle: vmlinuz,
vmlinux extracted from it, modules/<version> (depmod'ed) and a generated initramfs.
"""
from __future__ import annotations

from pathlib import Path

from banger.core import config
from banger.kernel.apt import apt_download, deb_extract, deb_fields, resolve_image_package
from banger.kernel import bundle
from banger.kernel.bundle import Bundle, KernelError, Log, Staged, commit, complete, kernels_dir, staging, validate_name

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
    if (kernels_dir(dirs) / name).exists() and not force:  # catalog.pull reports an installed one
        raise KernelError(f"kernel {name!r} already exists; use --force to replace it")
    package = resolve_image_package(flavour)
    log(f"downloading {package} with apt-get")
    with staging(dirs, name) as work:
        deb = apt_download(package, work)
        staged = stage_deb(deb, work)
        complete(staged, busybox, log)
        return commit(dirs, name, staged, source=f"debian:{flavour}", force=force)


def ensure_default_kernel(dirs: config.Dirs, log: Log | None = None) -> Bundle:
    """The default kernel, pulling debian:cloud-amd64 first when no bundle is installed at all."""
    try:
        return bundle.resolve(dirs)
    except KernelError:
        if bundle.list_bundles(dirs) or bundle.default_name(dirs) != bundle.DEFAULT_KERNEL:
            raise
    return pull(dirs, bundle.DEFAULT_SOURCE.split(":", 1)[1], log=log)
