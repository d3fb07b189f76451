"""Read an OCI layer blob as a stream of uncompressed tar bytes, checked against its diff_id.

Decompression and sha256 run in a child process (layer_decoder.py) that writes the tar to a
pipe: it works on the second core while this process parses headers and writes files, and
unlike a thread it never competes for this process's GIL (with threads, each of the ~3 syscalls
per file became a GIL hand-off, which made extraction several times slower). The pipe bounds
memory whatever the layer's size or compression ratio.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
from pathlib import Path

from banger.core.errors import BuildError
from banger.core.procs import dies_with_parent

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAGIC = {"gzip": GZIP_MAGIC, "zstd": ZSTD_MAGIC}
DECODER = Path(__file__).with_name("layer_decoder.py")


class LayerError(BuildError):
    """The layer blob is not what its descriptor or the image config says."""


def compression_of(media_type: str) -> str:
    """'gzip' | 'zstd' | 'none' for OCI and Docker layer media types."""
    mt = media_type.lower()
    if mt.endswith(("+gzip", ".tar.gzip")):
        return "gzip"
    if mt.endswith(("+zstd", ".tar.zstd")):
        return "zstd"
    if mt.endswith(".tar"):
        return "none"
    raise LayerError(f"unsupported layer media type {media_type!r}; banger reads tar, tar+gzip and tar+zstd layers")


def sniff(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(4)
    return next((name for name, magic in MAGIC.items() if head.startswith(magic)), "none")


class LayerStream:
    """File-like view (read/tell) of one layer's tar bytes, plus copy_to/skip for file data."""

    def __init__(self, path: Path, media_type: str, diff_id: str, label: str):
        self.label = label
        self.diff_id = diff_id
        compression = compression_of(media_type)
        found = sniff(path)
        if found != compression:
            raise LayerError(f"{label}: media type {media_type} says {compression} but the blob is "
                             f"{'not compressed (or unknown)' if found == 'none' else found}; the image manifest is wrong")
        # -P: do not put banger/ itself on the child's sys.path
        self._proc = subprocess.Popen([sys.executable, "-P", str(DECODER), str(path), compression],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      preexec_fn=dies_with_parent())
        assert self._proc.stdout is not None
        self._fd = self._proc.stdout.fileno()
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, CHUNK)
        self._buf = b""
        self._view = memoryview(self._buf)
        self._pos = 0
        self._offset = 0  # bytes handed out so far
        self._eof = False

    def _next_chunk(self) -> bool:
        if self._eof:
            return False
        chunk = os.read(self._fd, CHUNK)
        if not chunk:
            self._eof = True
            self._check_decoder()
            return False
        self._buf, self._view, self._pos = chunk, memoryview(chunk), 0
        return True

    def _check_decoder(self) -> None:
        assert self._proc.stderr is not None
        status = self._proc.wait()
        last = (self._proc.stderr.read().decode(errors="replace").strip().splitlines() or [""])[-1]
        if status != 0 or not last.startswith("sha256:"):
            reason = last.removeprefix("error: ") or f"decoder exited with status {status}"
            raise LayerError(f"{self.label}: cannot decompress the layer ({reason}); the blob is corrupt, re-pull it")
        self._digest = last

    def tell(self) -> int:
        return self._offset

    def read(self, n: int) -> bytes:
        end = self._pos + n
        if end <= len(self._buf):
            out = self._buf[self._pos:end]
            self._pos = end
            self._offset += n
            return out
        parts = []
        while n:
            if self._pos >= len(self._buf) and not self._next_chunk():
                break
            take = min(n, len(self._buf) - self._pos)
            parts.append(self._buf[self._pos:self._pos + take])
            self._pos += take
            self._offset += take
            n -= take
        return b"".join(parts)

    def copy_to(self, fd: int, n: int, hasher=None) -> int:
        """Write the next n bytes to fd (and into `hasher`); returns how many there were (< n: the
        layer ended)."""
        done = 0
        while done < n:
            if self._pos >= len(self._buf) and not self._next_chunk():
                break
            take = min(n - done, len(self._buf) - self._pos)
            view = self._view[self._pos:self._pos + take]
            if hasher is not None:
                hasher.update(view)
            while view:
                view = view[os.write(fd, view):]
            self._pos += take
            self._offset += take
            done += take
        return done

    def skip(self, n: int) -> int:
        done = 0
        while done < n:
            if self._pos >= len(self._buf) and not self._next_chunk():
                break
            take = min(n - done, len(self._buf) - self._pos)
            self._pos += take
            self._offset += take
            done += take
        return done

    def finish(self) -> None:
        """Consume the rest (padding after the end-of-archive blocks) and check the diff_id."""
        while self._next_chunk():
            self._offset += len(self._buf) - self._pos
            self._pos = len(self._buf)
        if self._digest != self.diff_id:
            raise LayerError(f"{self.label}: uncompressed content is {self._digest} but the image config "
                             f"says diff_id {self.diff_id}; the image is corrupt, re-pull or rebuild it")

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> "LayerStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
