"""Resumable, verified blob downloads into the store.

The bytes go to `<store>/staging/partial-<hex>`, a path stable across runs, so a download that
broke off (connection reset, kill -9, a stall or a crawl: see BlobTimeouts) continues with an HTTP
Range request. Only a file whose sha256 matches the digest is moved into the store; a mismatch
deletes the partial file. A resumed download that fails verification is retried once from zero,
since the kept prefix may have been the bad part.
"""
from __future__ import annotations

import math
import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import requests
import urllib3

from banger.core import digest as dg
from banger.core.errors import BuildError
from banger.core.store import Store, StoreError

CHUNK = 1 << 20
OpenRange = Callable[[int], requests.Response]  # offset -> response (200, 206 or 416)


STALL_ENV = "BANGER_BLOB_STALL_SECONDS"
MIN_RATE_ENV = "BANGER_BLOB_MIN_RATE"


class Interrupted(Exception):
    """The transfer broke off; the partial file is kept so the next attempt resumes it."""

    def __init__(self, reason: str, stalled: str | None = None):
        super().__init__(reason)
        self.stalled = stalled  # the setting that broke a stalled or crawling transfer off


@dataclass(frozen=True)
class BlobTimeouts:
    """When a blob transfer is broken off (to be resumed from its partial bytes): after `stall`
    seconds without a byte, or when an attempt takes longer than `stall` plus its bytes at
    `min_rate` bytes/s, so a server trickling a byte now and then cannot hold a build forever."""
    stall: float = 60.0
    min_rate: float = 16 << 10

    def deadline(self, remaining: int) -> float:
        """Seconds an attempt to fetch `remaining` bytes may take."""
        return self.stall + remaining / self.min_rate

    @classmethod
    def from_env(cls) -> "BlobTimeouts":
        default = cls()
        return cls(stall=_positive(STALL_ENV, default.stall), min_rate=_positive(MIN_RATE_ENV, default.min_rate))


def _positive(name: str, default: float) -> float:
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        value = float(text) if text.isascii() else math.nan
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise BuildError(f"{name}={text!r} is not a positive number; set it to e.g. {default:g} or unset it")
    return value


def partial_path(store: Store, digest: str) -> Path:
    return store.root / "staging" / f"partial-{dg.split(digest)[1]}"


def download_blob(store: Store, desc: dict, open_range: OpenRange, where: str,
                  progress: Callable[[int, int], None] | None = None,
                  timeouts: BlobTimeouts = BlobTimeouts()) -> str:
    digest = desc["digest"]
    if store.verify(digest):
        return digest
    with store.lock(f"blob-{dg.split(digest)[1]}"):  # one downloader per blob
        if store.verify(digest):
            return digest
        partial = partial_path(store, digest)
        for from_zero in (False, True):
            if from_zero:
                partial.unlink(missing_ok=True)
            resumed = partial.exists() and partial.stat().st_size > 0
            hashed = _transfer(partial, desc, open_range, where, progress, timeouts)
            try:  # the sha256 was taken while the bytes were written; else one pass now
                return store.ingest_file(partial, expected=digest, hashed=hashed)
            except StoreError:
                actual = dg.of_file(partial, "sha256")[0] if partial.exists() else "?"
                partial.unlink(missing_ok=True)
                if resumed and not from_zero:
                    continue
                raise BuildError(f"digest mismatch: {where} served {actual} for blob {digest}; "
                                 f"nothing was cached") from None
    raise AssertionError("unreachable")


def _transfer(partial: Path, desc: dict, open_range: OpenRange, where: str,
              progress: Callable[[int, int], None] | None, timeouts: BlobTimeouts) -> str | None:
    """Bring the partial file up to the blob's end (its declared size, or the end of the response);
    returns the sha256 of the whole file when it was taken on the way (None: not taken)."""
    size: int | None = desc.get("size")
    offset = partial.stat().st_size if partial.exists() else 0
    if size is not None and offset > size:
        partial.unlink()
        offset = 0
    if size is not None and offset == size and offset > 0:
        return None  # complete from an earlier run; only verification is left
    resp = open_range(offset)
    with resp:
        if resp.status_code == 416:
            partial.unlink(missing_ok=True)
            raise Interrupted("the registry refused the resume range")
        if resp.status_code == 206:
            if _range_start(resp.headers.get("Content-Range", "")) != offset:
                partial.unlink(missing_ok=True)
                raise Interrupted("the registry answered the resume request with another range")
            mode = "ab"
        else:
            offset, mode = 0, "wb"  # the server ignored Range: start over
        length = resp.headers.get("Content-Length", "")
        total = size if size is not None else (offset + int(length) if length.isdigit() else 0)
        done = offset
        if progress:
            progress(done, total)
        with _HashingFile(partial, mode) as f:
            done = _receive(resp, f, partial, done, size, total, where, desc["digest"], progress, timeouts)
    if size is not None and done < size:
        raise Interrupted(f"the connection closed after {done} of {size} bytes")
    return f.digest


class _HashingFile:
    """A file opened for writing whose bytes (the kept prefix too, when appending) are hashed
    by a second thread, so the sha256 (~0.3 GB/s here) overlaps the network reads."""

    def __init__(self, path: Path, mode: str):
        self._h = dg.hasher("sha256")
        if mode == "ab" and path.exists():
            with open(path, "rb") as prefix:
                while block := prefix.read(CHUNK):
                    self._h.update(block)
        self._file = open(path, mode)
        self._chunks: queue.Queue = queue.Queue(8)
        self._thread = threading.Thread(target=self._hash, daemon=True)
        self._thread.start()
        self.digest: str | None = None

    def _hash(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            self._h.update(chunk)

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._chunks.put(chunk)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "_HashingFile":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self._file.close()
        self._chunks.put(None)
        self._thread.join()
        if exc_type is None:
            self.digest = f"sha256:{self._h.hexdigest()}"


def _receive(resp: requests.Response, f: "_HashingFile", partial: Path, done: int,
             size: int | None, total: int, where: str, digest: str,
             progress: Callable[[int, int], None] | None, timeouts: BlobTimeouts) -> int:
    """Copy the response body to f. read1 returns whatever has arrived, so the deadline is
    checked on every trickle; the socket's read timeout (the stall timeout) bounds each wait."""
    start, offset = time.monotonic(), done
    of = f" of {total}" if total else ""
    while True:
        try:
            chunk = resp.raw.read1(CHUNK, decode_content=False)
        except (urllib3.exceptions.ReadTimeoutError, requests.exceptions.ReadTimeout, TimeoutError):
            raise Interrupted(f"no data for {timeouts.stall:g} s at {done}{of} bytes", STALL_ENV) from None
        except (urllib3.exceptions.HTTPError, requests.RequestException, ConnectionError) as exc:
            raise Interrupted(_reason(exc)) from None
        if not chunk:
            return done
        f.write(chunk)
        done += len(chunk)
        if size is not None and done > size:
            f.close()
            partial.unlink(missing_ok=True)
            raise BuildError(f"{where} sent more than the {size} bytes declared for blob {digest}; "
                             f"nothing was cached")
        if progress:
            progress(done, total)
        elapsed = time.monotonic() - start  # size unknown (total 0): the deadline grows with what came
        if elapsed > timeouts.deadline((total or done) - offset) and not (total and done >= total):
            raise Interrupted(f"slower than {timeouts.min_rate:g} bytes/s: {done}{of} bytes after {elapsed:.1f} s",
                              MIN_RATE_ENV)


def _range_start(content_range: str) -> int | None:
    m = re.match(r"bytes\s+(\d+)-\d+/(?:\d+|\*)$", content_range.strip())
    return int(m.group(1)) if m else None


def _reason(exc: BaseException) -> str:
    m = re.search(r"(IncompleteRead\([^)]*\)|Connection (?:reset|aborted|broken)[^'\")]*|timed out)", str(exc))
    return m.group(1) if m else type(exc).__name__
