"""A registry that trickles or stalls a blob download: the stall timeout and the size-scaled
deadline break the transfer off, and the retry resumes from the partial file with Range.

The registry is a tiny stdlib HTTP server on 127.0.0.1 that speaks just enough of the API
(/v2/ and a blob GET with Range), so the timeouts can be made ~0.5 s."""
from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from banger.core.errors import BuildError
from banger.core.store import Store
from banger.oci.blob_download import BlobTimeouts, partial_path
from banger.oci.registry import RegistryClient
from banger.oci.registry_http import RetryPolicy

BLOB = os.urandom(64 << 10)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
DESC = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": DIGEST, "size": len(BLOB)}
HEAD = 1000  # bytes sent at full speed before a misbehaving response slows down or stops
FAST = RetryPolicy(attempts=3, base_delay=0.01)
SMALL = BlobTimeouts(stall=0.5, min_rate=len(BLOB) * 4)  # stall after 0.5 s; the blob may take ~0.75 s


class SlowRegistry:
    """`plan`: what each blob GET does, in order ("stall", "trickle", then "ok" once it runs out)."""

    def __init__(self, plan: list[str]):
        self.plan = list(plan)
        self.ranges: list[str | None] = []
        self.done = threading.Event()
        reg = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                reg.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.done.set()
        self.server.shutdown()
        self.server.server_close()

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        if h.path == "/v2/":
            h.send_response(200)
            h.send_header("Content-Length", "2")
            h.end_headers()
            h.wfile.write(b"{}")
            return
        if h.path != f"/v2/test/slow/blobs/{DIGEST}":
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        rng = h.headers.get("Range")
        self.ranges.append(rng)
        start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)) if rng else 0
        body = BLOB[start:]
        h.send_response(206 if rng else 200)
        if rng:
            h.send_header("Content-Range", f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        mode = self.plan.pop(0) if self.plan else "ok"
        try:
            if mode == "ok":
                h.wfile.write(body)
                return
            h.wfile.write(body[:HEAD])
            h.wfile.flush()
            if mode == "stall":
                self.done.wait(30)
                return
            for i in range(HEAD, len(body)):  # "trickle": one byte every 0.05 s, never a stall
                if self.done.wait(0.05):
                    return
                h.wfile.write(body[i:i + 1])
                h.wfile.flush()
        except OSError:
            pass  # the client gave up on this response
        finally:
            h.close_connection = True


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "cache")


def start_of(range_header: str) -> int:
    return int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))


def bounded(fn, seconds: float = 20):
    """Run fn in a thread; fail (instead of hanging the suite) if it takes longer than `seconds`."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001  (handed to the test)
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"the download still hangs after {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_a_trickling_registry_is_broken_off_and_resumed_with_range(store):
    reg = SlowRegistry(["trickle"])
    try:
        c = RegistryClient(reg.host, "test/slow", retry=FAST, blob_timeouts=SMALL)
        assert bounded(lambda: c.fetch_blob(store, DESC)) == DIGEST
    finally:
        reg.stop()
    assert reg.ranges[0] is None and len(reg.ranges) == 2
    assert HEAD <= start_of(reg.ranges[1]) < len(BLOB)  # the partial bytes were kept, not fetched again
    assert store.verify(DIGEST, full=True)
    assert not partial_path(store, DIGEST).exists()


def test_a_stalled_registry_is_resumed_from_the_partial_length(store):
    reg = SlowRegistry(["stall"])
    try:
        c = RegistryClient(reg.host, "test/slow", retry=FAST, blob_timeouts=SMALL)
        assert bounded(lambda: c.fetch_blob(store, DESC)) == DIGEST
    finally:
        reg.stop()
    assert reg.ranges[0] is None and len(reg.ranges) == 2
    assert 0 < start_of(reg.ranges[1]) <= HEAD  # all HEAD bytes, unless the machine is very slow
    assert store.verify(DIGEST, full=True)


def test_a_registry_that_keeps_stalling_fails_with_one_line_and_the_next_run_resumes(store, monkeypatch):
    monkeypatch.setenv("BANGER_BLOB_STALL_SECONDS", "0.5")  # the knobs a user (or test) sets
    monkeypatch.setenv("BANGER_BLOB_MIN_RATE", str(len(BLOB) * 4))
    reg = SlowRegistry(["stall", "stall", "stall"])
    try:
        c = RegistryClient(reg.host, "test/slow", retry=FAST)
        with pytest.raises(BuildError) as exc:
            bounded(lambda: c.fetch_blob(store, DESC))
        kept = partial_path(store, DIGEST).stat().st_size
        msg = str(exc.value)
        assert "\n" not in msg
        assert msg.startswith(f"download of {DIGEST} from {reg.host}/test/slow stalled 3 times "
                              f"(no data for 0.5 s at {kept} of {len(BLOB)} bytes)")
        assert msg.endswith("; run the build again to resume it (on a slow link, raise BANGER_BLOB_STALL_SECONDS)")
        # each stalled response sent up to HEAD more bytes, and each retry resumed after them
        assert reg.ranges[0] is None and len(reg.ranges) == 3
        assert 0 < start_of(reg.ranges[1]) < start_of(reg.ranges[2]) < kept <= 3 * HEAD
        assert not store.path(DIGEST).exists()
        assert bounded(lambda: c.fetch_blob(store, DESC)) == DIGEST  # the plan ran out: "ok"
    finally:
        reg.stop()
    assert reg.ranges[-1] == f"bytes={kept}-"  # the next run resumed where this one stopped
    assert store.verify(DIGEST, full=True)


@pytest.mark.parametrize("name,value", [("BANGER_BLOB_STALL_SECONDS", "soon"), ("BANGER_BLOB_MIN_RATE", "0"),
                                        ("BANGER_BLOB_STALL_SECONDS", "-1")])
def test_bad_timeout_settings_are_one_line(name, value, monkeypatch):
    monkeypatch.setenv(name, value)
    with pytest.raises(BuildError, match=rf"^{name}={value!r} is not a positive number; "):
        BlobTimeouts.from_env()


def test_the_deadline_scales_with_the_size():
    t = BlobTimeouts(stall=60, min_rate=1 << 20)
    assert t.deadline(0) == 60
    assert t.deadline(100 << 20) == 160
