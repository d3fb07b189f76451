"""banger's streaming tar header parser agrees with Python's tarfile, member by member, on tars
written by tarfile and by GNU tar in every format they write."""
from __future__ import annotations

import io
import os
import subprocess
import tarfile

import pytest

from banger.oci.tar_headers import TarHeaderError, TarHeaders
from tests.support_tools import need
from tests.support_layers import CAP_NET_RAW, M, dir_, file, link, set_size, sym, tar_bytes

KIND = {tarfile.REGTYPE: "reg", tarfile.AREGTYPE: "reg", tarfile.CONTTYPE: "reg", tarfile.DIRTYPE: "dir",
        tarfile.SYMTYPE: "sym", tarfile.LNKTYPE: "link", tarfile.CHRTYPE: "chr", tarfile.BLKTYPE: "blk",
        tarfile.FIFOTYPE: "fifo"}

LONG = "very-long-directory-name/" * 8 + "file-" + "x" * 120
MEMBERS = [
    dir_("d", mode=0o2775, uid=1000, gid=1000),
    file("d/a", "hello", mode=0o4755, uid=12, gid=34, mtime=1_600_000_000),
    file(LONG, "long name"),
    sym("d/abs", "/" + "t" * 150),  # long link target
    link("d/hard", LONG),
    file("ünïcode/名前", "utf-8 name"),
    file("bad-\udcff-name", "not utf-8"),
    file("caps", "x", xattrs={"security.capability": CAP_NET_RAW, "user.a": b"b"}),
    file("big-uid", "x", uid=3_000_000, gid=2_500_000),
    M("dev/null", "chr", major=1, minor=3), M("dev/sda", "blk", major=8, minor=16), M("fifo", "fifo"),
    file("empty"),
]


def ours(data: bytes) -> list[tuple]:
    stream = io.BytesIO(data)
    headers, out = TarHeaders(stream), []
    while (m := headers.next()) is not None:
        out.append((m.name, m.kind, m.size, m.mode, m.uid, m.gid, m.mtime, m.linkname,
                    (m.devmajor, m.devminor) if m.kind in ("chr", "blk") else None, m.xattrs))
        stream.read(m.data_size + (-m.data_size % 512))
    return out


def theirs(data: bytes) -> list[tuple]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|", encoding="utf-8", errors="surrogateescape") as tf:
        for t in tf:
            xattrs = {k[len("SCHILY.xattr."):]: v.encode("utf-8", "surrogateescape")
                      for k, v in t.pax_headers.items() if k.startswith("SCHILY.xattr.")}
            out.append((t.name, KIND[t.type], t.size if t.isreg() else 0, t.mode & 0o7777, t.uid, t.gid,
                        int(t.mtime), t.linkname, (t.devmajor, t.devminor) if t.ischr() or t.isblk() else None, xattrs))
    return out


def normalised(rows: list[tuple]) -> list[tuple]:
    """Non-reg members carry no data: size 0 in both views."""
    return [(r[0].rstrip("/"), r[1], r[2] if r[1] == "reg" else 0, *r[3:]) for r in rows]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_agrees_with_tarfile(fmt):
    members = [m for m in MEMBERS if fmt == tarfile.PAX_FORMAT or not m.xattrs]
    data = tar_bytes(members, fmt=fmt)
    assert normalised(ours(data)) == normalised(theirs(data))
    assert len(ours(data)) == len(members)


def test_ustar_prefix_names_and_global_pax_headers():
    data = tar_bytes([file("p" * 90 + "/" + "n" * 90, "split name"), dir_("d")], fmt=tarfile.USTAR_FORMAT)
    assert normalised(ours(data)) == normalised(theirs(data))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"uid": "77"}) as tf:
        info = tarfile.TarInfo("g")
        tf.addfile(info, io.BytesIO())
    assert ours(buf.getvalue())[0][4] == 77 == theirs(buf.getvalue())[0][4]


@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar", "oldgnu"])
def test_agrees_with_tarfile_on_gnu_tar_output(tmp_path, fmt):
    need("tar")
    root = tmp_path / "root"
    (root / "sub" / ("deep" * 20)).mkdir(parents=True)
    (root / "sub" / ("deep" * 20) / "f").write_bytes(os.urandom(3000))
    (root / "exec").write_text("#!/bin/sh\n")
    os.chmod(root / "exec", 0o4751)
    os.symlink("sub", root / "link")
    os.link(root / "exec", root / "exec-hardlink")
    if os.geteuid() == 0:
        os.chown(root / "exec", 1234, 5678)
    data = subprocess.run(["tar", "-C", str(root), f"--format={fmt}", "--numeric-owner", "-cf", "-", "."],
                          check=True, capture_output=True).stdout
    assert normalised(ours(data)) == normalised(theirs(data))


def test_rejects_what_it_cannot_represent():
    data = bytearray(tar_bytes([file("a", "x")], fmt=tarfile.USTAR_FORMAT))
    data[156:157] = b"S"  # GNU sparse
    data[148:156] = b" " * 8
    data[148:156] = f"{sum(data[:512]):06o}\0 ".encode()
    with pytest.raises(TarHeaderError, match="unsupported tar entry type 'S'"):
        ours(bytes(data))
    with pytest.raises(TarHeaderError, match="checksum"):
        ours(b"x" * 512)
    bad = set_size(tar_bytes([file("a", "x")], fmt=tarfile.USTAR_FORMAT), 0, 1)
    assert ours(bad)[0][2] == 1
