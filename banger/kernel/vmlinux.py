"""Extract the uncompressed ELF `vmlinux` from an x86 bzImage (Firecracker on x86_64 boots ELF only).

A bzImage is a real-mode setup block followed by a small decompressor whose payload is the
compressed vmlinux. Boot protocol >= 2.08 records where the payload is (`payload_offset`,
`payload_length`); otherwise we scan for the compressors' magic numbers, as the kernel's
`scripts/extract-vmlinux` does. Supported payloads: gzip, xz, lzma, zstd, bzip2 and lz4 (the
kernel's legacy lz4 framing, decoded here in Python because the stdlib has no lz4; Debian's cloud
kernels use it). The output is streamed to disk block by block.
"""
from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

ELF_MAGIC = b"\x7fELF"
BANNER = b"Linux version "
CHUNK = 1 << 20
LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK = 8 << 20

# Payload magics, most specific first (lzma's is weak, so it is tried last).
MAGICS: list[tuple[str, bytes]] = [
    ("gzip", b"\x1f\x8b\x08"),
    ("xz", b"\xfd7zXZ\x00"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("lz4", struct.pack("<I", LZ4_LEGACY_MAGIC)),
    ("bzip2", b"BZh"),
    ("lzma", b"\x5d\x00\x00"),
]


class VmlinuxError(ValueError):
    pass


@dataclass(frozen=True)
class BzImage:
    protocol: int
    payload_offset: int | None  # absolute offset in the file
    payload_length: int | None
    release: str | None  # "6.1.0-56-cloud-amd64" from the header's kernel_version string


def read_bzimage_header(data: bytes) -> BzImage | None:
    """The setup header of a bzImage, or None when `data` is not one."""
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        return None
    protocol = struct.unpack_from("<H", data, 0x206)[0]
    setup_sects = data[0x1F1] or 4
    base = (setup_sects + 1) * 512
    offset = length = None
    if protocol >= 0x208:
        rel, length = struct.unpack_from("<II", data, 0x248)
        offset = base + rel
        if offset + length > len(data) or length == 0:
            offset = length = None
    release = None
    version_ptr = struct.unpack_from("<H", data, 0x20E)[0]
    if version_ptr:
        raw = data[version_ptr + 0x200: version_ptr + 0x200 + 256].split(b"\0", 1)[0]
        text = raw.decode("ascii", "replace").split(" ", 1)[0]
        release = text or None
    return BzImage(protocol, offset, length, release)


def kernel_release(path: Path) -> str | None:
    """The kernel release a bzImage announces in its header ("6.1.0-56-cloud-amd64")."""
    with open(path, "rb") as f:
        head = f.read(0x8000)
    info = read_bzimage_header(head)
    return info.release if info else None


def is_bzimage(path: Path) -> bool:
    with open(path, "rb") as f:
        return read_bzimage_header(f.read(0x300)) is not None


def extract(bzimage: Path, dest: Path) -> str:
    """Write the ELF vmlinux inside `bzimage` to `dest`; return the payload's compression name."""
    data = Path(bzimage).read_bytes()  # a bzImage is ~10-15 MB; the 50+ MB output is streamed
    if data[:4] == ELF_MAGIC:
        _write(dest, iter([data]))
        return "none"
    info = read_bzimage_header(data)
    candidates: list[tuple[str, int, int]] = []
    if info and info.payload_offset is not None:
        payload = data[info.payload_offset: info.payload_offset + 8]
        for name, magic in MAGICS:
            if payload.startswith(magic):
                candidates.append((name, info.payload_offset, info.payload_offset + info.payload_length))
                break
    for name, magic in MAGICS:  # fallback: every occurrence of every magic, like extract-vmlinux
        pos = data.find(magic)
        while pos != -1 and len(candidates) < 64:
            candidates.append((name, pos, len(data)))
            pos = data.find(magic, pos + 1)
    errors: list[str] = []
    for name, start, end in candidates:
        try:
            _write(dest, DECODERS[name](memoryview(data)[start:end]))
        except (VmlinuxError, OSError, EOFError, ValueError, IndexError, zlib.error, lzma.LZMAError) as exc:
            errors.append(f"{name}@{start}: {exc}")
            continue
        return name
    with_payload = "; ".join(errors[:3]) or "no gzip/xz/lzma/zstd/bzip2/lz4 payload found"
    raise VmlinuxError(f"{bzimage} holds no extractable vmlinux ({with_payload}); "
                       "import a vmlinux ELF with `banger kernel import NAME --from DIR`")


def _write(dest: Path, chunks: Iterator[bytes]) -> None:
    """Stream chunks to dest; fail (and remove dest) unless the result starts like an ELF."""
    first = True
    try:
        with open(dest, "wb") as out:
            for chunk in chunks:
                if first and chunk:
                    if bytes(chunk[:4]) != ELF_MAGIC:
                        raise VmlinuxError("payload does not decompress to an ELF image")
                    first = False
                out.write(chunk)
        if first:
            raise VmlinuxError("payload decompressed to nothing")
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def _pieces(payload: memoryview) -> Iterator[memoryview]:
    for pos in range(0, len(payload), CHUNK):
        yield payload[pos: pos + CHUNK]


def _until_eof(d, payload: memoryview, name: str) -> Iterator[bytes]:
    """Feed a decompressor object (with .decompress and .eof) until its stream ends."""
    for piece in _pieces(payload):
        yield d.decompress(piece)
        if d.eof:
            return
    raise VmlinuxError(f"truncated {name} payload")


def _gzip(payload: memoryview) -> Iterator[bytes]:
    return _until_eof(zlib.decompressobj(16 + zlib.MAX_WBITS), payload, "gzip")


def _lzma_family(fmt: int) -> Callable[[memoryview], Iterator[bytes]]:
    return lambda payload: _until_eof(lzma.LZMADecompressor(format=fmt), payload, "xz/lzma")


def _bzip2(payload: memoryview) -> Iterator[bytes]:
    return _until_eof(bz2.BZ2Decompressor(), payload, "bzip2")


def _zstd(payload: memoryview) -> Iterator[bytes]:
    import zstandard

    return _until_eof(zstandard.ZstdDecompressor(max_window_size=1 << 31).decompressobj(), payload, "zstd")


def _lz4_legacy(payload: memoryview) -> Iterator[bytes]:
    """The legacy lz4 frame: magic, then independent blocks of (LE32 size, lz4 block) <= 8 MiB.

    The kernel build appends the decompressed size (LE32) after the last block; a "block size"
    larger than what is left marks the end.
    """
    data = payload.tobytes()
    if struct.unpack_from("<I", data, 0)[0] != LZ4_LEGACY_MAGIC:
        raise VmlinuxError("not an lz4 legacy frame")
    pos, total = 4, 0
    while pos + 4 <= len(data):
        size = struct.unpack_from("<I", data, pos)[0]
        if size == LZ4_LEGACY_MAGIC:  # concatenated frames
            pos += 4
            continue
        if size == 0 or size > len(data) - pos - 4:
            break
        block = lz4_block(data[pos + 4: pos + 4 + size], LZ4_LEGACY_BLOCK)
        total += len(block)
        yield bytes(block)
        pos += 4 + size
    if total == 0:
        raise VmlinuxError("empty lz4 payload")


def lz4_block(src: bytes, limit: int) -> bytearray:
    """Decode one raw lz4 block (the format of lz4's `LZ4_decompress_safe`)."""
    out = bytearray()
    i, n = 0, len(src)
    try:
        while True:
            token = src[i]
            i += 1
            lit, i = _lz4_length(src, i, token >> 4)
            if lit:
                out += src[i: i + lit]
                i += lit
            if i >= n:
                break
            offset = src[i] | (src[i + 1] << 8)
            i += 2
            length, i = _lz4_length(src, i, token & 15)
            length += 4
            start = len(out) - offset
            if offset == 0 or start < 0:
                raise VmlinuxError("corrupt lz4 block (bad match offset)")
            if offset >= length:
                out += out[start: start + length]
            else:  # overlapping match: repeat the last `offset` bytes
                pattern = out[start:]
                reps, rest = divmod(length, offset)
                out += pattern * reps + pattern[:rest]
            if len(out) > limit:
                raise VmlinuxError("corrupt lz4 block (too large)")
    except IndexError:
        raise VmlinuxError("truncated lz4 block") from None
    return out


def _lz4_length(src: bytes, i: int, length: int) -> tuple[int, int]:
    """A token's 4-bit length; 15 continues in the following bytes (each adds up to 255)."""
    if length == 15:
        while True:
            b = src[i]
            i += 1
            length += b
            if b != 255:
                break
    return length, i


DECODERS: dict[str, Callable[[memoryview], Iterator[bytes]]] = {
    "gzip": _gzip,
    "xz": _lzma_family(lzma.FORMAT_XZ),
    "lzma": _lzma_family(lzma.FORMAT_ALONE),
    "zstd": _zstd,
    "bzip2": _bzip2,
    "lz4": _lz4_legacy,
}


def linux_banner(vmlinux: Path) -> str | None:
    """The "Linux version X ..." banner inside an uncompressed kernel image, if any."""
    with open(vmlinux, "rb") as f:
        tail = b""
        while chunk := f.read(CHUNK * 4):
            buf = tail + chunk
            pos = buf.find(BANNER)
            while pos != -1:
                end = buf.find(b"\0", pos)
                if end == -1:
                    more = f.read(4096)
                    buf += more
                    end = buf.find(b"\0", pos)
                line = buf[pos: end if end != -1 else pos + 512]
                # the format string "Linux version %s" also appears; skip it
                if not line.startswith(BANNER + b"%"):
                    return line.decode("ascii", "replace").strip()
                pos = buf.find(BANNER, pos + 1)
            tail = buf[-len(BANNER):]
    return None


def elf_machine(path: Path) -> int:
    """e_machine of an ELF file (62 = x86_64, 183 = aarch64)."""
    with open(path, "rb") as f:
        head = f.read(20)
    if head[:4] != ELF_MAGIC:
        raise VmlinuxError(f"{path} is not an ELF file")
    return struct.unpack_from("<H" if head[5] == 1 else ">H", head, 18)[0]
