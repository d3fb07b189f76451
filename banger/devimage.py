"""The embedded default image: a real Debian rootfs made into an OCI image, for `banger demo`,
the test-suite and the benchmarks.

    debootstrap (root, cached) -> deterministic layer tar -> OCI layout -> local registry

The Debian mirror comes from the host's apt configuration at run time; no mirror host is
written here. The image is a plain systemd Debian like a stock cloud image; everything
banger-specific (SSH key, network bootstrap, guest agent) is added later by the inject step.
"""
from __future__ import annotations

import email.utils
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import requests

from . import devregistry, oci_writer
from .fsutil import remove_tree

# Bump when the recipe below (packages, clean-up, tar format) changes: cached images rebuild.
RECIPE_VERSION = "2"
DEFAULT_SUITE = "bookworm"
# iputils-ping brings a real file capability (cap_net_raw on /usr/bin/ping) into the image.
DEFAULT_INCLUDE = ("systemd", "systemd-sysv", "udev", "openssh-server", "iproute2",
                   "ca-certificates", "iputils-ping")
HOSTNAME = "debian"
DEMO_REPO = "debian"

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
# xattrs that describe the build host, not the image.
HOST_ONLY_XATTRS = re.compile(r"^(security\.selinux|trusted\.overlay\..*|user\.overlay\..*)$")

Log = Callable[[str], None]


class DevImageError(Exception):
    """One-line, user-facing failure of the demo/test image machinery."""


def _say(msg: str) -> None:
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
                       slim: bool = True, log: Log = _say) -> int:
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


# ---- layer tar --------------------------------------------------------------------------------
@dataclass
class TarStats:
    entries: int = 0
    regular_files: int = 0
    content_bytes: int = 0
    hardlinks: int = 0
    devices: int = 0
    xattrs: int = 0
    skipped_sockets: int = 0


def _walk(root: str, rel: str = "") -> Iterator[tuple[str, str]]:
    """(relative path, absolute path), parents before children, siblings in byte order."""
    base = os.path.join(root, rel) if rel else root
    with os.scandir(base) as it:
        names = sorted((e.name for e in it), key=os.fsencode)
    for name in names:
        child_rel = f"{rel}/{name}" if rel else name
        child_abs = os.path.join(base, name)
        yield child_rel, child_abs
        if os.path.isdir(child_abs) and not os.path.islink(child_abs):
            yield from _walk(root, child_rel)


def _xattrs(path: str) -> dict[str, str]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in sorted(names):
        if HOST_ONLY_XATTRS.match(name):
            continue
        value = os.getxattr(path, name, follow_symlinks=False)
        # _RawPaxTarInfo writes str values back to the original bytes (surrogateescape).
        out[f"SCHILY.xattr.{name}"] = value.decode("utf-8", "surrogateescape")
    return out


class _RawPaxTarInfo(tarfile.TarInfo):
    """Writes PAX values as raw bytes, like GNU tar and Go's archive/tar do for xattrs.

    CPython instead prefixes a `hdrcharset=BINARY` record whenever a value is not UTF-8 (an
    xattr value rarely is), which GNU tar warns about on every such entry.
    """

    @classmethod
    def _create_pax_generic_header(cls, pax_headers, type, encoding):  # noqa: A002 (tarfile's name)
        records = b""
        for keyword, value in pax_headers.items():
            kw, val = keyword.encode("utf-8"), value.encode("utf-8", "surrogateescape")
            length = len(kw) + len(val) + 3  # ' ' + '=' + '\n'
            n = p = 0
            while True:  # the record length counts its own digits
                n = length + len(str(p))
                if n == p:
                    break
                p = n
            records += str(p).encode() + b" " + kw + b"=" + val + b"\n"
        info = {"name": "././@PaxHeader", "type": type, "size": len(records), "magic": tarfile.POSIX_MAGIC}
        return cls._create_header(info, tarfile.USTAR_FORMAT, "ascii", "replace") + cls._create_payload(records)


def rootfs_to_layer_tar(rootfs: Path, out_tar: Path, source_date_epoch: int | None = None) -> TarStats:
    """Write `rootfs` as a deterministic uncompressed PAX tar, streaming file contents.

    Sorted entries, numeric uid/gid only, mtimes clamped to SOURCE_DATE_EPOCH (argument or
    environment), no atime/ctime, xattrs as SCHILY.xattr.*, hardlinks, device nodes and FIFOs.
    Sockets cannot be represented in tar and are skipped (counted in the stats).
    """
    if source_date_epoch is None and os.environ.get("SOURCE_DATE_EPOCH"):
        source_date_epoch = int(os.environ["SOURCE_DATE_EPOCH"])
    stats = TarStats()
    seen_inodes: dict[tuple[int, int], str] = {}
    part = out_tar.with_name(out_tar.name + ".part")
    root = str(rootfs)
    with open(part, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT,
                                               copybufsize=1 << 20) as tar:
        for rel, path in _walk(root):
            st = os.lstat(path)
            info = _RawPaxTarInfo(rel)
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid, info.gid = st.st_uid, st.st_gid
            info.uname = info.gname = ""
            mtime = int(st.st_mtime)
            info.mtime = min(mtime, source_date_epoch) if source_date_epoch is not None else mtime
            fmt = stat.S_IFMT(st.st_mode)
            data = None
            if fmt == stat.S_IFREG:
                first = seen_inodes.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
                if first is not None:
                    info.type, info.linkname = tarfile.LNKTYPE, first
                    stats.hardlinks += 1
                else:
                    if st.st_nlink > 1:
                        seen_inodes[(st.st_dev, st.st_ino)] = rel
                    info.type, info.size = tarfile.REGTYPE, st.st_size
                    data = open(path, "rb")
                    stats.regular_files += 1
                    stats.content_bytes += st.st_size
            elif fmt == stat.S_IFDIR:
                info.type = tarfile.DIRTYPE
            elif fmt == stat.S_IFLNK:
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
            elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
                info.type = tarfile.CHRTYPE if fmt == stat.S_IFCHR else tarfile.BLKTYPE
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                stats.devices += 1
            elif fmt == stat.S_IFIFO:
                info.type = tarfile.FIFOTYPE
            else:
                stats.skipped_sockets += 1
                continue
            if info.type != tarfile.LNKTYPE:
                info.pax_headers = _xattrs(path)
                stats.xattrs += len(info.pax_headers)
            try:
                tar.addfile(info, data)
            finally:
                if data is not None:
                    data.close()
            stats.entries += 1
        tar.close()
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(part, out_tar)
    return stats


# ---- OCI layout -------------------------------------------------------------------------------
def recipe_key(suite: str, include: tuple[str, ...], arch: str, slim: bool = True) -> str:
    recipe = {"recipe": RECIPE_VERSION, "suite": suite, "include": sorted(include), "arch": arch}
    if not slim:
        recipe["slim"] = False
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _dpkg_arch() -> str:
    try:
        return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def cached_rootfs_tar(cache_dir: Path, suite: str = DEFAULT_SUITE, include: tuple[str, ...] = DEFAULT_INCLUDE,
                      slim: bool = True, log: Log = _say) -> tuple[Path, dict]:
    """The layer tar of the Debian rootfs, built once per (recipe version, suite, packages, arch, slim)."""
    arch = _dpkg_arch()
    key = recipe_key(suite, include, arch, slim)
    tar_path = cache_dir / f"debian-{suite}-{key}.tar"
    info_path = cache_dir / f"debian-{suite}-{key}.json"
    if tar_path.exists() and info_path.exists():
        return tar_path, json.loads(info_path.read_text())
    cache_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix="staging-", dir=cache_dir))
    try:
        rootfs = stage / "rootfs"
        started = time.monotonic()
        epoch = debootstrap_rootfs(rootfs, suite, include, debs_cache=cache_dir / "debs",
                                   logfile=cache_dir / "debootstrap.log", slim=slim, log=log)
        debootstrap_seconds = time.monotonic() - started
        log("writing the rootfs as a deterministic layer tar")
        started = time.monotonic()
        stats = rootfs_to_layer_tar(rootfs, stage / "layer.tar", epoch)
        info = {"suite": suite, "include": list(include), "arch": arch, "recipe": RECIPE_VERSION,
                "slim": slim,
                "source_date_epoch": epoch, "debootstrap_seconds": round(debootstrap_seconds, 1),
                "tar_seconds": round(time.monotonic() - started, 1), **asdict(stats)}
        os.replace(stage / "layer.tar", tar_path)
        info_path.write_text(json.dumps(info, indent=1) + "\n")
        _drop_outdated_recipes(cache_dir)
        log(f"rootfs: {stats.entries} entries, {stats.content_bytes / 1e6:.0f} MB "
            f"(debootstrap {debootstrap_seconds:.0f} s)")
        return tar_path, info
    finally:
        unmount_under(stage)
        remove_tree(stage)


def _drop_outdated_recipes(cache_dir: Path) -> None:
    """Remove cached rootfs tars made by an older RECIPE_VERSION (they can never be used again)."""
    for info_path in cache_dir.glob("debian-*.json"):
        try:
            outdated = json.loads(info_path.read_text()).get("recipe") != RECIPE_VERSION
        except (OSError, json.JSONDecodeError):
            continue
        if outdated:
            info_path.with_suffix(".tar").unlink(missing_ok=True)
            info_path.unlink(missing_ok=True)


def _tagged_manifest(layout: Path, tag: str) -> dict | None:
    try:
        index = json.loads((layout / "index.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    for desc in index.get("manifests", []):
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return desc
    return None


def _open_lock(path: Path):
    try:
        return open(path, "a")
    except PermissionError:  # a cache made by root, read by an unprivileged run: flock works on "r"
        return open(path, "r")


def build_debian_layout(layout_dir: Path, tag: str, cache_dir: Path, suite: str = DEFAULT_SUITE,
                        include: tuple[str, ...] = DEFAULT_INCLUDE, slim: bool = True, log: Log = _say) -> dict:
    """An OCI layout at `layout_dir` whose `tag` is the Debian image; returns its manifest descriptor.

    Reuses `layout_dir` when it was built from the same recipe, else rebuilds it (debootstrap only
    when the cached rootfs tar for this recipe is missing). Safe against concurrent callers.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    layout_dir = Path(layout_dir)
    key = recipe_key(suite, include, _dpkg_arch(), slim)
    stamp_path = layout_dir / "banger-devimage.json"
    with _open_lock(cache_dir / "devimage.lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            stamp = json.loads(stamp_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            stamp = {}
        desc = _tagged_manifest(layout_dir, tag)
        if stamp.get("key") == key and desc is not None and desc["digest"] == stamp.get("manifest"):
            return desc
        tar_path, info = cached_rootfs_tar(cache_dir, suite, include, slim, log)
        log(f"writing OCI layout {layout_dir.name}:{tag} (gzip layer)")
        layout_dir.parent.mkdir(parents=True, exist_ok=True)
        new = Path(tempfile.mkdtemp(prefix=f".{layout_dir.name}-", dir=layout_dir.parent))
        try:
            os.chmod(new, 0o755)  # mkdtemp makes it private; the layout is read by unprivileged runs
            config = oci_writer.ImageConfig(architecture=info["arch"], cmd=["/bin/bash"])
            desc = oci_writer.write_image(new, [oci_writer.Layer(tar_path, "gzip")], config)
            oci_writer.write_index(new, tag, [desc])
            (new / "banger-devimage.json").write_text(json.dumps({"key": key, "manifest": desc["digest"]}))
            old = layout_dir.with_name(f".{layout_dir.name}.old")
            remove_tree(old)
            if layout_dir.exists():
                os.rename(layout_dir, old)
            os.rename(new, layout_dir)
            remove_tree(old)
        finally:
            remove_tree(new)
        return _tagged_manifest(layout_dir, tag) or desc


# ---- registry ---------------------------------------------------------------------------------
def push(layout: Path, tag: str, registry_host: str, repo: str) -> str:
    """Copy `layout:tag` to `registry_host/repo:tag` (plain HTTP); returns the pushed reference."""
    if shutil.which("skopeo") is None:
        raise DevImageError("skopeo not found; run: apt-get install skopeo")
    ref = f"{registry_host}/{repo}:{tag}"
    out = subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                          f"oci:{layout}:{tag}", f"docker://{ref}"], capture_output=True, text=True)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise DevImageError(f"pushing {layout.name}:{tag} to {ref} failed: {last}")
    return ref


def registry_digest(registry_host: str, repo: str, tag: str) -> str | None:
    """The manifest digest `repo:tag` has in a plain-HTTP registry, or None if it has none."""
    accept = ", ".join([oci_writer.MT_MANIFEST, oci_writer.MT_INDEX,
                        "application/vnd.docker.distribution.manifest.v2+json"])
    r = requests.head(f"http://{registry_host}/v2/{repo}/manifests/{tag}", headers={"Accept": accept},
                      timeout=10)
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return r.headers.get("Docker-Content-Digest")


def _port_is_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        # as a Go server binds: a TIME_WAIT left by the previous run does not make it busy
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ensure_demo_image(cache_dir: Path, slim: bool = True,
                      log: Log = _say) -> tuple[devregistry.LocalRegistry, str]:
    """Start the demo registry (storage and port kept under `cache_dir`) holding the Debian image.

    Returns (registry, "127.0.0.1:PORT/debian:bookworm"); the caller stops the registry.
    The port is kept between runs when it is free, so the reference usually stays the same.
    First run: debootstrap (root, ~1.5 min) + push; later runs: registry start only.
    `slim=False` keeps docs, manual pages and translations (a W1-sized image, for benchmarks).
    """
    cache_dir = Path(cache_dir)
    layout = cache_dir / ("debian-oci" if slim else "debian-full-oci")
    desc = build_debian_layout(layout, DEFAULT_SUITE, cache_dir / "debian-src", slim=slim, log=log)
    reg_root = cache_dir / "registry"
    port_file = reg_root / "port"
    port = None
    if port_file.exists() and port_file.read_text().strip().isdigit():
        port = int(port_file.read_text())
        if not _port_is_free(port):
            port = None
    registry = devregistry.start(reg_root, port=port)
    try:
        port_file.write_text(registry.host.rsplit(":", 1)[1] + "\n")
        log(f"local registry: {registry.url} (storage {reg_root})")
        repo = DEMO_REPO if slim else f"{DEMO_REPO}-full"
        ref = f"{registry.host}/{repo}:{DEFAULT_SUITE}"
        if registry_digest(registry.host, repo, DEFAULT_SUITE) != desc["digest"]:
            log(f"pushing the Debian image to {ref}")
            push(layout, DEFAULT_SUITE, registry.host, repo)
        log(f"image ready: {ref} ({desc['digest'][:19]})")
        return registry, ref
    except BaseException:
        registry.stop()
        raise
