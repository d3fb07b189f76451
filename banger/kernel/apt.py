"""Debian packages through the host's apt configuration: resolve, download, read, unpack.

No kernel bundle knowledge here (the Debian kernel import and the initramfs's busybox use it).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from banger.kernel.errors import KernelError

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
    if not FLAVOUR_RE.fullmatch(flavour):
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
