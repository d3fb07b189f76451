"""A root filesystem directory written as a deterministic OCI layer tar (sorted, PAX, pinned times,
hardlinks, devices, xattrs and file capabilities kept; host-only xattrs dropped).
"""
from __future__ import annotations

import os
import re
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# xattrs that describe the build host, not the image.
HOST_ONLY_XATTRS = re.compile(r"^(security\.selinux|trusted\.overlay\..*|user\.overlay\..*)$")


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
