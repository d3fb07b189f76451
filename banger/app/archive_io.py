"""The byte level of `cache export`/`cache import`: sparse blobs in the tar, a capped reader, and
an extractor that cannot write outside its staging directory.

Export writes a disk image with holes as a GNU sparse (PAX 1.0) member: only its data extents
travel, and any tar reader (GNU tar, Python's tarfile, an older banger) restores it whole.

Import writes nothing but fresh files in a private staging directory: every path is walked one
component at a time from a directory handle with O_NOFOLLOW, every file is created with O_EXCL
(a member that names an existing path, e.g. a symlink the archive planted, is refused), a hardlink
must name a regular file earlier in its own tree, modes are those banger's trees have (never
set-id, sticky or group/world-writable: such a tree then fails its digest), and runs of zeros
become holes again. The
decompressed stream and the files' sizes (holes included) are capped.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO

from banger.core import digest as dg
from banger.core.progress import human_bytes

BLOCK = 64 * 1024  # zero runs this long (aligned) become holes
CHUNK = 1 << 20
APPARENT_FACTOR = 32  # files may add up to this many times the cap, holes included
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ArchiveError(Exception):
    """One line: what in the archive was refused."""


# ---- export side -------------------------------------------------------------------------------
def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """[(offset, length)] of the file's data (SEEK_DATA/SEEK_HOLE); the rest are holes."""
    extents, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        extents.append((start, end - start))
        pos = end
    return extents


class _Extents:
    """read() over a sparse map block followed by the file's data extents."""

    def __init__(self, head: bytes, fd: int, extents: list[tuple[int, int]]):
        self.head, self.fd, self.extents = head, fd, list(extents)

    def read(self, n: int = -1) -> bytes:
        """Up to n bytes, fewer only at the end (tarfile wants whole reads)."""
        out = bytearray()
        while len(out) < n and (piece := self._piece(n - len(out))):
            out += piece
        return bytes(out)

    def _piece(self, n: int) -> bytes:
        if self.head:
            out, self.head = self.head[:n], self.head[n:]
            return out
        while self.extents:
            offset, length = self.extents[0]
            if length == 0:
                self.extents.pop(0)
                continue
            data = os.pread(self.fd, min(n, length, CHUNK), offset)
            if not data:
                raise ArchiveError("a file shrank while it was being exported")
            self.extents[0] = (offset + len(data), length - len(data))
            return data
        return b""


def add_file(tar: tarfile.TarFile, path: Path, arcname: str) -> None:
    """A regular file as a member; one with holes as a GNU sparse 1.0 member (its data only)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        extents = data_extents(f.fileno(), st.st_size)
        if st.st_blocks * 512 >= st.st_size or extents == [(0, st.st_size)]:
            info = tarfile.TarInfo(arcname)
            info.size, info.mode, info.mtime = st.st_size, 0o444, int(st.st_mtime)
            f.seek(0)  # SEEK_DATA/SEEK_HOLE moved it
            tar.addfile(info, f)
            return
        head = (f"{len(extents)}\n" + "".join(f"{o}\n{n}\n" for o, n in extents)).encode()
        head += b"\0" * (-len(head) % tarfile.BLOCKSIZE)
        parent, _, base = arcname.rpartition("/")
        info = tarfile.TarInfo(f"{parent}/GNUSparseFile.0/{base}")
        info.size = len(head) + sum(n for _, n in extents)
        info.mode, info.mtime = 0o444, int(st.st_mtime)
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                            "GNU.sparse.name": arcname, "GNU.sparse.realsize": str(st.st_size)}
        tar.addfile(info, _Extents(head, f.fileno(), extents))


# ---- import side -------------------------------------------------------------------------------
class CappedReader:
    """A stream that raises ArchiveError once more than `cap` bytes came out of it."""

    def __init__(self, raw: BinaryIO, cap: int):
        self.raw, self.cap, self.total = raw, cap, 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.total += len(data)
        if self.total > self.cap:
            raise ArchiveError(f"it expands to more than {human_bytes(self.cap)}; refusing it "
                               "(for a larger export, set BANGER_IMPORT_MAX_BYTES)")
        return data


class HashingReader:
    def __init__(self, raw: BinaryIO):
        self.raw, self.hash = raw, dg.hasher("sha256")

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        return data

    def digest(self) -> str:
        return f"sha256:{self.hash.hexdigest()}"


def write_sparse(src: BinaryIO, fd: int, algorithm: str | None = None) -> str | None:
    """Copy src to the new file fd; aligned zero blocks become holes. The content digest if
    `algorithm` is given (taken over every byte, holes included)."""
    h = dg.hasher(algorithm) if algorithm else None
    zeros, zero_chunk = bytes(BLOCK), bytes(CHUNK)
    pos = 0
    while chunk := src.read(CHUNK):
        if h is not None:
            h.update(chunk)
        if len(chunk) == CHUNK and chunk == zero_chunk:  # one memcmp for a whole hole
            pos += CHUNK
            continue
        view = memoryview(chunk)
        for start in range(0, len(view), BLOCK):
            piece = view[start:start + BLOCK]
            if piece != (zeros if len(piece) == BLOCK else zeros[:len(piece)]):
                os.pwrite(fd, piece, pos + start)
        pos += len(chunk)
    os.ftruncate(fd, pos)
    return f"{algorithm}:{h.hexdigest()}" if h is not None else None


class SizeBudget:
    """Files' sizes (holes included) may add up to APPARENT_FACTOR times the stream cap."""

    def __init__(self, cap: int):
        self.total = self.left = cap * APPARENT_FACTOR

    def take(self, member: tarfile.TarInfo) -> None:
        self.left -= max(member.size, 0)
        if self.left < 0:
            raise ArchiveError(f"with member {member.name!r} its files add up to more than "
                               f"{human_bytes(self.total)}; refusing it (for a larger export, set "
                               "BANGER_IMPORT_MAX_BYTES)")


def new_file(dir_fd: int, name: str, mode: int = 0o600) -> int:
    try:
        return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                       dir_fd=dir_fd)
    except FileExistsError:
        raise ArchiveError(f"{name!r} appears twice; refusing the archive") from None


class TreeWriter:
    """Extracts one tree's members under `root` (a new directory), never leaving it."""

    def __init__(self, root: Path, prefix: str):
        os.mkdir(root, 0o700)
        self.fd = os.open(root, DIR_FLAGS)
        self.prefix = prefix  # "trees/<alg>/<hex>/": what hardlink targets must start with

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def _walk(self, parts: list[str], create: bool, member: str) -> int:
        """A handle on the directory parts name, below root; a symlink or a file on the way is refused."""
        fd = os.dup(self.fd)
        try:
            for name in parts:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o700, dir_fd=fd)
                try:
                    child = os.open(name, DIR_FLAGS, dir_fd=fd)
                except OSError:
                    raise ArchiveError(f"member {member!r} goes through {name!r}, which is not a "
                                       "directory of its tree (a symlink?); refusing the archive") from None
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo, rel: list[str]) -> None:
        if not rel:
            if not member.isdir():
                raise ArchiveError(f"tree {member.name!r} is not a directory; refusing the archive")
            os.fchmod(self.fd, member.mode & 0o755 | 0o700)
            return
        parent = self._walk(rel[:-1], True, member.name)
        name = rel[-1]
        try:
            if member.isdir():
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o700, dir_fd=parent)
                fd = _open_dir(parent, name, member.name)
                try:
                    os.fchmod(fd, member.mode & 0o755 | 0o700)
                finally:
                    os.close(fd)
            elif member.issym():
                try:
                    os.symlink(member.linkname, name, dir_fd=parent)
                except FileExistsError:
                    raise ArchiveError(f"{member.name!r} appears twice; refusing the archive") from None
            elif member.islnk():
                self._link(member, parent, name)
            elif member.isfile():
                fd = new_file(parent, name)
                try:
                    write_sparse(tar.extractfile(member), fd)
                    os.fchmod(fd, member.mode & 0o755 | 0o600)
                finally:
                    os.close(fd)
            else:
                raise ArchiveError(f"member {member.name!r} is neither a file, a directory nor a link; "
                                   "refusing the archive")
        finally:
            os.close(parent)

    def _link(self, member: tarfile.TarInfo, parent: int, name: str) -> None:
        target = member.linkname
        rel = target[len(self.prefix):].split("/") if target.startswith(self.prefix) else []
        if not rel or any(p in ("", ".", "..") for p in rel):
            raise ArchiveError(f"hardlink {member.name!r} points outside its tree ({target!r}); "
                               "refusing the archive")
        src_dir = self._walk(rel[:-1], False, member.name)
        try:
            try:
                st = os.stat(rel[-1], dir_fd=src_dir, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is None or not stat.S_ISREG(st.st_mode):
                raise ArchiveError(f"hardlink {member.name!r} does not name a file earlier in its tree; "
                                   "refusing the archive")
            try:
                os.link(rel[-1], name, src_dir_fd=src_dir, dst_dir_fd=parent, follow_symlinks=False)
            except FileExistsError:
                raise ArchiveError(f"{member.name!r} appears twice; refusing the archive") from None
        finally:
            os.close(src_dir)


def _open_dir(parent: int, name: str, member: str) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent)
    except OSError:
        raise ArchiveError(f"member {member!r} names an existing non-directory (a symlink?); "
                           "refusing the archive") from None
