"""Resumable, verified blob downloads into the store.

The bytes go to `<store>/staging/partial-<hex>`, a path stable across runs, so a download that
broke off (connection reset, kill -9) continues with an HTTP Range request. Only a file whose
sha256 matches the digest is moved into the store; a mismatch deletes the partial file. A
resumed download that fails verification is retried once from zero, since the kept prefix may
have been the bad part.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import requests
import urllib3

from . import digest as dg
from .engine import BuildError
from .store import Store, StoreError

CHUNK = 1 << 20
OpenRange = Callable[[int], requests.Response]  # offset -> response (200, 206 or 416)


class Interrupted(Exception):
    """The transfer broke off; the partial file is kept so the next attempt resumes it."""


def partial_path(store: Store, digest: str) -> Path:
    return store.root / "staging" / f"partial-{dg.split(digest)[1]}"


def download_blob(store: Store, desc: dict, open_range: OpenRange, where: str,
                  progress: Callable[[int, int], None] | None = None) -> str:
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
            _transfer(partial, desc, open_range, where, progress)
            try:
                return store.ingest_file(partial, expected=digest)  # one sha256 pass, then the rename
            except StoreError:
                actual = dg.of_file(partial, "sha256")[0] if partial.exists() else "?"
                partial.unlink(missing_ok=True)
                if resumed and not from_zero:
                    continue
                raise BuildError(f"digest mismatch: {where} served {actual} for blob {digest}; "
                                 f"nothing was cached") from None
    raise AssertionError("unreachable")


def _transfer(partial: Path, desc: dict, open_range: OpenRange, where: str,
              progress: Callable[[int, int], None] | None) -> None:
    """Bring the partial file up to the blob's end (its declared size, or the end of the response)."""
    size: int | None = desc.get("size")
    offset = partial.stat().st_size if partial.exists() else 0
    if size is not None and offset > size:
        partial.unlink()
        offset = 0
    if size is not None and offset == size and offset > 0:
        return  # complete from an earlier run; only verification is left
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
        done = _receive(resp, partial, mode, done, size, total, where, desc["digest"], progress)
    if size is not None and done < size:
        raise Interrupted(f"the connection closed after {done} of {size} bytes")


def _receive(resp: requests.Response, partial: Path, mode: str, done: int,
             size: int | None, total: int, where: str, digest: str,
             progress: Callable[[int, int], None] | None) -> int:
    stream = resp.raw.stream(CHUNK, decode_content=False)
    with open(partial, mode) as f:
        while True:
            try:
                chunk = next(stream, None)
            except (urllib3.exceptions.HTTPError, requests.RequestException, ConnectionError, TimeoutError) as exc:
                raise Interrupted(_reason(exc)) from None
            if chunk is None:
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


def _range_start(content_range: str) -> int | None:
    m = re.match(r"bytes\s+(\d+)-\d+/(?:\d+|\*)$", content_range.strip())
    return int(m.group(1)) if m else None


def _reason(exc: BaseException) -> str:
    m = re.search(r"(IncompleteRead\([^)]*\)|Connection (?:reset|aborted|broken)[^'\")]*|timed out)", str(exc))
    return m.group(1) if m else type(exc).__name__
