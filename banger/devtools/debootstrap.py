"""A Debian root filesystem made with debootstrap from the host's apt mirror, then tidied (slim,
reproducible: no machine id, no logs, pinned hostname). Runs as root; the result is cached by
debian_image.py. The mirror comes from the host's apt configuration; none is written here.
"""
from __future__ import annotations

import email.utils
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from banger.core.fsutil import remove_tree

DEFAULT_SUITE = "bookworm"
# iputils-ping brings a real file capability (cap_net_raw on /usr/bin/ping) into the image.
DEFAULT_INCLUDE = ("systemd", "systemd-sysv", "udev", "openssh-server", "iproute2",
                   "ca-certificates", "iputils-ping")
HOSTNAME = "debian"

# What Debian's own "slim" images leave out (debuerreotype --slimify); dpkg keeps honouring it.
DPKG_EXCLUDES = """\
# Keep the image small: no documentation, manual pages or translations.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""
# (glob, name kept inside each match) - the same set as DPKG_EXCLUDES, applied after the fact.
SLIM_REMOVE = (("usr/share/doc/*", "copyright"), ("usr/share/locale/*", "locale.alias"),
               ("usr/share/man/*", None), ("usr/share/groff/*", None), ("usr/share/info/*", None),
               ("usr/share/lintian/*", None), ("usr/share/linda/*", None))
HOSTS = """\
127.0.0.1	localhost
127.0.1.1	{hostname}
::1	localhost ip6-localhost ip6-loopback
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
"""

Log = Callable[[str], None]


class DevImageError(Exception):
    """One-line, user-facing failure of the demo/test image machinery."""


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- mirror ------------------------------------------------------------------------------------
def mirror_uri(suite: str = DEFAULT_SUITE) -> str:
    """The Debian archive URI the host's apt uses for `suite` (not the security archive)."""
    if shutil.which("apt-get") is None:
        raise DevImageError("apt-get not found: building the Debian demo image needs a Debian/Ubuntu host")
    out = subprocess.run(["apt-get", "indextargets", "--format", "$(REPO_URI) $(RELEASE) $(TARGET_OF)"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise DevImageError(f"apt-get indextargets failed: {last}")
    candidates: list[tuple[int, str]] = []
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[2] != "deb":
            continue
        uri, release, _ = parts
        if "security" in uri or release.endswith("-security"):
            continue
        candidates.append((0 if release == suite else 1, uri))
    if not candidates:
        raise DevImageError(f"no Debian mirror for {suite} in the host's apt configuration; "
                            f"add a 'deb' line to /etc/apt/sources.list and run apt-get update")
    return sorted(candidates)[0][1]


# ---- debootstrap ------------------------------------------------------------------------------
def debootstrap_rootfs(dest: Path, suite: str = DEFAULT_SUITE, include: tuple[str, ...] = DEFAULT_INCLUDE,
                       debs_cache: Path | None = None, logfile: Path | None = None,
                       slim: bool = True, log: Log = say) -> int:
    """Debootstrap a minbase Debian with `include` into `dest` (must not exist) and tidy it the way
    a stock cloud image is tidied (`slim`: also without docs, manual pages and translations).
    Needs root. Returns the archive's Release date (epoch seconds): the layer's SOURCE_DATE_EPOCH."""
    if os.geteuid() != 0:
        raise DevImageError("building the Debian image runs debootstrap, which needs root: run this once "
                            "as root (later runs reuse the cached image)")
    if shutil.which("debootstrap") is None:
        raise DevImageError("debootstrap not found; run: apt-get install debootstrap")
    mirror = mirror_uri(suite)
    cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(include)}"]
    if debs_cache is not None:
        debs_cache.mkdir(parents=True, exist_ok=True)
        cmd.append(f"--cache-dir={debs_cache.resolve()}")
    cmd += [suite, str(dest), mirror]
    logfile = logfile or dest.parent / f"{dest.name}.debootstrap.log"
    log(f"debootstrap {suite} minbase + {len(include)} packages from the host's apt mirror (about a minute)")
    try:
        with open(logfile, "wb") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    finally:
        unmount_under(dest)  # a failed debootstrap can leave /proc, /sys or /dev mounted inside
    if proc.returncode != 0:
        lines = [ln for ln in logfile.read_text(errors="replace").splitlines() if ln.startswith(("E:", "W:"))]
        last = (lines or logfile.read_text(errors="replace").splitlines() or ["(no output)"])[-1]
        raise DevImageError(f"debootstrap failed (exit {proc.returncode}): {last.strip()} (log: {logfile})")
    epoch = _release_date(dest)
    tidy_rootfs(dest, slim)
    return epoch


def _release_date(rootfs: Path) -> int:
    for release in sorted((rootfs / "var/lib/apt/lists").glob("*Release")):
        for line in release.read_text(errors="replace").splitlines():
            if line.startswith("Date:"):
                return int(email.utils.parsedate_to_datetime(line[5:].strip()).timestamp())
    return int(time.time())


def tidy_rootfs(rootfs: Path, slim: bool = True) -> None:
    """Make a fresh debootstrap image-like: no host leftovers, unique per-VM ids, lean."""
    etc = rootfs / "etc"
    (etc / "hostname").write_text(HOSTNAME + "\n")
    (etc / "hosts").write_text(HOSTS.format(hostname=HOSTNAME))
    # debootstrap copies the build host's resolver config; the VM gets its own from banger.
    (etc / "resolv.conf").unlink(missing_ok=True)
    # Empty (not missing): systemd generates a fresh id per VM and does not treat the boot as a
    # "first boot" (which would re-apply presets to every unit).
    (etc / "machine-id").write_text("")
    (rootfs / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    # Host keys made at install time would be shared by every VM of the image; like a cloud image,
    # ship none and let boot create them (banger's inject step adds that unit).
    for key in (etc / "ssh").glob("ssh_host_*_key*"):
        key.unlink()
    if slim:
        (etc / "dpkg/dpkg.cfg.d").mkdir(parents=True, exist_ok=True)
        (etc / "dpkg/dpkg.cfg.d/excludes").write_text(DPKG_EXCLUDES)
        for pattern, keep in SLIM_REMOVE:
            for path in rootfs.glob(pattern):
                if path.name == keep:
                    continue
                if path.is_dir() and not path.is_symlink() and keep is not None:
                    for child in list(path.iterdir()):
                        if child.name != keep:
                            _remove(child)
                    if not (path / keep).exists():
                        _remove(path)
                else:
                    _remove(path)
    # apt caches and indexes (apt-get update recreates them), install logs, backups, temp files.
    for pattern in ("var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/lib/apt/lists/*",
                    "var/log/*.log", "var/log/apt/*", "var/cache/debconf/*-old", "var/lib/dpkg/*-old",
                    "tmp/*", "var/tmp/*"):
        for path in rootfs.glob(pattern):
            if path.name not in ("partial", "lock"):
                _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        remove_tree(path)
    else:
        path.unlink(missing_ok=True)


def unmount_under(root: Path) -> None:
    """Unmount everything mounted at or below `root` (deepest first) so removing it is safe."""
    prefix = os.path.realpath(root)
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)
