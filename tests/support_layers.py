"""Craft tar layers (including malformed and hostile ones) and layer blobs for the flatten tests."""
from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from banger.devtools.oci_writer import MT_LAYER

CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")  # setcap cap_net_raw+ep


@dataclass
class M:
    """One tar member: kind is file, dir, sym, link, chr, blk or fifo."""
    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: int = 1_700_000_000
    target: str = ""  # sym / link
    major: int = 0
    minor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)


def file(name: str, data: bytes | str = b"", **kw) -> M:
    return M(name, "file", data.encode() if isinstance(data, str) else data, **kw)


def dir_(name: str, **kw) -> M:
    return M(name, "dir", **kw)


def sym(name: str, target: str, **kw) -> M:
    return M(name, "sym", target=target, **kw)


def link(name: str, target: str, **kw) -> M:
    return M(name, "link", target=target, **kw)


def whiteout(path: str) -> M:
    head, _, base = path.rpartition("/")
    return file(f"{head}/.wh.{base}" if head else f".wh.{base}")


def opaque(directory: str) -> M:
    return file(f"{directory}/.wh..wh..opq")


TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "link": tarfile.LNKTYPE,
         "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}


def tar_bytes(members: list[M], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tf:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = TYPES[m.kind]
            info.mode = m.mode if m.mode is not None else (0o755 if m.kind == "dir" else 0o644)
            info.uid, info.gid, info.mtime = m.uid, m.gid, m.mtime
            info.linkname = m.target
            info.devmajor, info.devminor = m.major, m.minor
            if m.xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                                    for k, v in m.xattrs.items()}
            if m.kind == "file":
                info.size = len(m.data)
                tf.addfile(info, io.BytesIO(m.data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def set_size(tar: bytes, member_index: int, size: int) -> bytes:
    """Rewrite the size field of the member_index-th header block (ustar/GNU tars) and its checksum."""
    data = bytearray(tar)
    offset = 0
    for _ in range(member_index):
        declared = int(data[offset + 124:offset + 136].strip(b"\0 ") or b"0", 8)
        offset += 512 + declared + (-declared % 512)
    data[offset + 124:offset + 136] = f"{size:011o}\0".encode()
    data[offset + 148:offset + 156] = b" " * 8
    data[offset + 148:offset + 156] = f"{sum(data[offset:offset + 512]):06o}\0 ".encode()
    return bytes(data)


def zstd_frames(data: bytes, frames: int) -> bytes:
    import zstandard

    step = max(1, -(-len(data) // frames))
    return b"".join(zstandard.ZstdCompressor(level=3).compress(data[i:i + step]) for i in range(0, len(data), step))


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        return zstd_frames(data, 3)
    return data


def blob(directory: Path, tar: bytes, compression: str = "gzip", raw: bytes | None = None) -> tuple[Path, str, str]:
    """Write a layer blob; returns (path, media type, diff_id) as flatten_layers takes them."""
    body = compress(tar, compression) if raw is None else raw
    path = directory / f"layer-{hashlib.sha256(body).hexdigest()[:16]}"
    path.write_bytes(body)
    return path, MT_LAYER[compression], "sha256:" + hashlib.sha256(tar).hexdigest()
