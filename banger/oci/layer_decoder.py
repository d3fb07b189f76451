"""Child process of layer_reader: decompress one layer blob to stdout, hashing what it writes.

Usage: python3 -P layer_decoder.py BLOB gzip|zstd|none
On success the last line on stderr is `sha256:<hex>` of the uncompressed stream; on failure
it is `error: <reason>` and the exit status is 1. Stdlib, isal and zstandard only (no banger
imports), so it starts fast. Decompression runs in the main thread, sha256 + the pipe writes in another.
A zstd stream cut inside a frame ends quietly (python-zstandard does not flag it); the diff_id
check in the parent catches that.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import queue
import sys
import threading

CHUNK = 1 << 20


def _source(f, compression: str):
    if compression == "gzip":
        try:
            from isal import igzip  # ISA-L: the same format and checks, 2-3x faster than zlib
        except ImportError:  # a platform without an isal wheel: stdlib zlib
            return gzip.GzipFile(fileobj=f, mode="rb")
        return igzip.IGzipFile(fileobj=f, mode="rb")  # multi-member, CRC and length checked
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(f, read_size=CHUNK, read_across_frames=True)
    return f


def _sink(chunks: queue.Queue, h, out: int) -> None:
    try:
        while (chunk := chunks.get()) is not None:
            h.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view):]
    except OSError:  # the reader went away (it failed or was stopped): nothing left to do
        os._exit(2)


def main(path: str, compression: str) -> int:
    h = hashlib.sha256()
    chunks: queue.Queue = queue.Queue(4)
    writer = threading.Thread(target=_sink, args=(chunks, h, sys.stdout.fileno()), daemon=True)
    writer.start()
    try:
        with open(path, "rb") as f, _source(f, compression) as src:
            while chunk := src.read(CHUNK):
                chunks.put(chunk)
    except Exception as exc:  # one line for the parent, whatever failed
        sys.stderr.write(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}\n")
        return 1
    finally:
        chunks.put(None)
        writer.join()
    sys.stderr.write(f"sha256:{h.hexdigest()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
