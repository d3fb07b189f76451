"""How one action travels through an OCI registry (`cache push/pull`, `--cache-to/--cache-from`):
one artifact manifest per action key, tagged `action-<key>`:

    artifactType  application/vnd.banger.action.v1+json
    config        the action record (JSON), same media type
    layers        its outputs, one each, annotated with the output's name, banger digest,
                  encoding and (decoded) size:
                    raw       a sha256 blob as it is (fetch's layers): the layer digest is its digest
                    extents+zstd  any other blob (disk images: sparse, mostly zeros): its extent map
                              (8-byte length, then JSON {"size": N, "extents": [[offset, length],
                              ...]}) then the bytes of
                              those data extents, zstd-compressed; holes neither travel nor get
                              compressed; after decoding the banger digest is checked
                    tar+zstd  a directory tree as a deterministic tar (sorted, no owners or
                              times), zstd-compressed; extracted into staging and hashed

Encodings are deterministic (single-threaded zstd at a fixed level), so the same output yields
the same layer digest and a second push finds every blob already there (HEAD).
Decoding writes only into a staging directory (archive_io's TreeWriter, capped sizes); nothing
enters the store here.
"""
from __future__ import annotations

import json
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

from banger.app.archive_io import ArchiveError, CappedReader, TreeWriter, data_extents, new_file
from banger.core import digest as dg
from banger.core.store import TREE, Store, tree_digest

ACTION_TYPE = "application/vnd.banger.action.v1+json"
IMAGE_TYPE = "application/vnd.banger.image.v1+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
EMPTY = {"mediaType": "application/vnd.oci.empty.v1+json",
         "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2}
LAYER_TYPES = {"raw": "application/octet-stream",
               "extents+zstd": "application/vnd.banger.blob.v1.extents+zstd",
               "tar+zstd": "application/vnd.banger.tree.v1.tar+zstd"}
A_OUTPUT, A_DIGEST, A_ENCODING, A_SIZE = ("dev.banger.output", "dev.banger.digest", "dev.banger.encoding",
                                          "dev.banger.size")
ZSTD_LEVEL = 3
MAX_HEADER = 16 << 20  # an extent map line
TREE_MAX_BYTES = 64 << 30  # a tree's decompressed tar stream
PREFIX = "tree"


def action_tag(key: str) -> str:
    return f"action-{key}"


def image_tag(name: str) -> str:
    return f"image-{name}"[:128]


@dataclass
class Layer:
    """One output ready to push: its descriptor and the file holding its bytes."""
    descriptor: dict
    path: Path


def encoding_of(digest: str) -> str:
    if digest.startswith(TREE):
        return "tar+zstd"
    return "raw" if digest.startswith("sha256:") else "extents+zstd"


def encode(store: Store, name: str, digest: str, stage: Path) -> Layer:
    """The layer for output `name` (the store's artifact `digest`), written under `stage` unless raw."""
    import zstandard

    encoding = encoding_of(digest)
    src = store.path(digest)
    annotations = {A_OUTPUT: name, A_DIGEST: digest, A_ENCODING: encoding}
    if encoding == "raw":
        size = src.stat().st_size
        annotations[A_SIZE] = str(size)
        return Layer({"mediaType": LAYER_TYPES[encoding], "digest": digest, "size": size,
                      "annotations": annotations}, src)
    out = stage / f"layer-{len(list(stage.iterdir()))}"
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=0, write_checksum=True)
    with open(out, "wb") as raw, compressor.stream_writer(raw, closefd=False) as zw:
        if encoding == "extents+zstd":
            annotations[A_SIZE] = str(_write_extents(src, zw))
        else:
            annotations[A_SIZE] = str(_write_tree_tar(src, zw))
    layer_digest, size = dg.of_file(out, "sha256")
    return Layer({"mediaType": LAYER_TYPES[encoding], "digest": layer_digest, "size": size,
                  "annotations": annotations}, out)


def _write_extents(src: Path, out) -> int:
    """The file as its extent map and data extents (see the module doc); its size."""
    with open(src, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        extents = data_extents(f.fileno(), size)
        header = json.dumps({"size": size, "extents": extents}, separators=(",", ":")).encode()
        out.write(len(header).to_bytes(8, "big") + header)
        for offset, length in extents:
            while length:
                data = os.pread(f.fileno(), min(length, 1 << 20), offset)
                if not data:
                    raise ArchiveError(f"{src} shrank while it was being pushed")
                out.write(data)
                offset, length = offset + len(data), length - len(data)
    return size


def _read_extents(src, fd: int, size: int, algorithm: str) -> str:
    """Write an extents stream into the new file fd; the digest of the whole file, holes included."""
    length = int.from_bytes(_read_exact(src, 8), "big")
    if length > MAX_HEADER:
        raise ArchiveError("its extent map is too long")
    header = _read_exact(src, length)
    try:
        doc = json.loads(header)
        total, extents = doc["size"], [(int(o), int(n)) for o, n in doc["extents"]]
    except (ValueError, KeyError, TypeError):
        raise ArchiveError("its extent map is not valid") from None
    pos = 0
    for offset, length in extents:
        if offset < pos or length <= 0 or offset + length > total:
            raise ArchiveError("its extent map is not sorted, overlaps or runs past the end")
        pos = offset + length
    if total != size:
        raise ArchiveError(f"its extent map says {total} bytes, its annotation {size}")
    h, zeros, pos = dg.hasher(algorithm), bytes(1 << 20), 0
    for offset, length in extents:
        while pos < offset:  # a hole: hashed as zeros, never written
            n = min(len(zeros), offset - pos)
            h.update(zeros[:n] if n < len(zeros) else zeros)
            pos += n
        while length:
            data = src.read(min(length, 1 << 20))
            if not data:
                raise ArchiveError("its data ends before its extent map does")
            os.pwrite(fd, data, pos)
            h.update(data)
            pos, length = pos + len(data), length - len(data)
    while pos < total:
        n = min(len(zeros), total - pos)
        h.update(zeros[:n] if n < len(zeros) else zeros)
        pos += n
    if src.read(1):
        raise ArchiveError("it has bytes after its last extent")
    os.ftruncate(fd, total)
    return f"{algorithm}:{h.hexdigest()}"


def _read_exact(src, n: int) -> bytes:
    out = bytearray()
    while len(out) < n and (data := src.read(n - len(out))):
        out += data
    if len(out) < n:
        raise ArchiveError("it ends inside its extent map")
    return bytes(out)


def _write_tree_tar(root: Path, fileobj) -> int:
    """A tar of the tree: sorted entries, modes kept, no owners, times or hardlinks. Its size."""
    counted = _Counting(fileobj)
    with tarfile.open(fileobj=counted, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        def add(path: Path, arc: str) -> None:
            st = path.lstat()
            info = tarfile.TarInfo(arc)
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = \
                stat.S_IMODE(st.st_mode), 0, 0, 0, "", ""
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                for child in sorted(os.listdir(path)):
                    add(path / child, f"{arc}/{child}")
            elif stat.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                raise ArchiveError(f"{path} is neither a file, a directory nor a link; cannot push its tree")
        add(root, PREFIX)
    return counted.n


class _Counting:
    def __init__(self, raw):
        self.raw, self.n = raw, 0

    def write(self, data) -> int:
        self.n += len(data)
        return self.raw.write(data)


def check_layer(desc: dict, outputs: dict[str, str]) -> tuple[str, str, str, int]:
    """(output name, banger digest, encoding, decoded size) of a pulled layer descriptor, checked
    against the record's outputs; ArchiveError (one line) if it does not belong to them."""
    ann = desc.get("annotations") if isinstance(desc, dict) else None
    if not isinstance(ann, dict):
        raise ArchiveError("a layer has no banger annotations")
    name, digest, encoding = ann.get(A_OUTPUT), ann.get(A_DIGEST), ann.get(A_ENCODING)
    if not isinstance(name, str) or outputs.get(name) != digest:
        raise ArchiveError(f"layer {str(name)[:40]!r} is not one of the record's outputs")
    if encoding != encoding_of(digest) or desc.get("mediaType") != LAYER_TYPES[encoding]:
        raise ArchiveError(f"output {name!r} travels in an unexpected encoding")
    if encoding == "raw" and desc.get("digest") != digest:
        raise ArchiveError(f"output {name!r} is a layer of another digest")
    try:
        size = int(ann.get(A_SIZE, ""))
    except ValueError:
        raise ArchiveError(f"output {name!r} has no decoded size") from None
    if not isinstance(desc.get("digest"), str) or not dg.DIGEST_RE.fullmatch(desc["digest"]) \
            or not desc["digest"].startswith("sha256:") or size < 0:
        raise ArchiveError(f"output {name!r} has a malformed descriptor")
    return name, digest, encoding, size


def decode(layer_file: Path, digest: str, encoding: str, size: int, stage: Path) -> Path:
    """Decode a downloaded (sha256-verified) layer into `stage`; the file or tree it holds, whose
    banger digest is checked to be `digest`. ArchiveError (one line) on any mismatch."""
    import zstandard

    if encoding == "raw":
        return layer_file  # the layer's sha256 is the output's digest, checked on download
    out = stage / f"out-{digest.removeprefix(TREE).replace(':', '-')}"
    try:
        with open(layer_file, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as zr:
            capped = CappedReader(zr, size + 8 + MAX_HEADER if encoding == "extents+zstd"
                                  else min(size, TREE_MAX_BYTES))
            if encoding == "extents+zstd":
                stage_fd = os.open(stage, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    fd = new_file(stage_fd, out.name)
                finally:
                    os.close(stage_fd)
                try:
                    got = _read_extents(capped, fd, size, dg.split(digest)[0])
                finally:
                    os.close(fd)
            else:
                writer = TreeWriter(out, f"{PREFIX}/")
                try:
                    with tarfile.open(fileobj=capped, mode="r|") as tar:
                        for member in tar:
                            parts = member.name.split("/")
                            if parts[0] != PREFIX or any(p in ("", ".", "..") for p in parts):
                                raise ArchiveError(f"unsafe member {member.name[:60]!r} in the tree of {digest[:24]}…")
                            writer.add(tar, member, parts[1:])
                finally:
                    writer.close()
                got = tree_digest(out)
    except (zstandard.ZstdError, tarfile.TarError) as exc:
        raise ArchiveError(f"output {digest[:24]}… does not decode ({exc})") from None
    if got != digest:
        raise ArchiveError(f"digest mismatch: an output claimed as {digest[:30]}… decodes to {str(got)[:30]}…")
    return out
