"""Helpers for the registry tests: craft small images, push them with skopeo, and a loopback
proxy in front of a real registry that misbehaves on purpose (Bearer auth, corrupt or cut-off
blobs, 429s, redirects to another host name)."""
from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

from banger.devtools import oci_writer


def make_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def make_image(layout: Path, tag: str, files: dict[str, bytes], compression: str = "gzip",
               arch: str = "amd64", variant: str | None = None) -> dict:
    """A one-layer image in `layout` under `tag`; returns its manifest descriptor."""
    layout.mkdir(parents=True, exist_ok=True)
    tar = make_tar(layout.parent / f".{layout.name}-{tag}-{arch}.tar", files)
    desc = oci_writer.write_image(layout, [oci_writer.Layer(tar, compression)],
                                  oci_writer.ImageConfig(architecture=arch, variant=variant))
    oci_writer.write_index(layout, tag, [desc])
    tar.unlink()
    return desc


def push(layout: Path, tag: str, dest: str, *, all_images: bool = False, creds: str | None = None,
         fmt: str | None = None) -> None:
    """skopeo copy oci:LAYOUT:TAG docker://DEST (plain HTTP)."""
    cmd = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
    if all_images:
        cmd.append("--all")
    if creds:
        cmd += ["--dest-creds", creds]
    if fmt:
        cmd += ["--format", fmt]
    done = subprocess.run(cmd + [f"oci:{layout}:{tag}", f"docker://{dest}"], capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"skopeo copy to {dest} failed: {done.stderr.strip()}")


def docker_config(home: Path, host: str, user: str, password: str) -> Path:
    path = home / ".docker" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return path


@dataclass
class Seen:
    method: str
    path: str
    host: str
    headers: dict


@dataclass
class Proxy:
    """A loopback HTTP server forwarding /v2/ to `upstream`, with switchable misbehaviour."""
    upstream: str
    token: str = "test-token-123"
    bearer: bool = False  # demand a Bearer token (served by /token)
    token_creds: tuple[str, str] | None = None  # the token endpoint demands these (Basic)
    corrupt: set = field(default_factory=set)  # blob digests served with one byte flipped
    cut: dict = field(default_factory=dict)  # blob digest -> how many more GETs to cut off midway
    throttle: list = field(default_factory=list)  # (path substring, Retry-After[, status]): one 429 (or status) each
    redirect_blobs: bool = False  # 307 blob GETs to `redirect_to` (default: this server as "localhost")
    redirect_to: str | None = None
    manifest_type: str | None = None  # serve manifests with this Content-Type instead
    seen: list = field(default_factory=list)

    def start(self) -> "Proxy":
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                proxy._handle(self)

            def do_GET(self):
                proxy._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        return self

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def requests_to(self, fragment: str) -> list[Seen]:
        return [s for s in self.seen if fragment in s.path]

    # ---- one request -------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        host = h.headers.get("Host", "")
        self.seen.append(Seen(h.command, h.path, host, dict(h.headers.items())))
        if h.path.startswith("/token"):
            return self._token(h)
        for i, (fragment, retry_after, *status) in enumerate(self.throttle):
            if fragment in h.path:
                del self.throttle[i]
                return self._reply(h, status[0] if status else 429, b'{"errors":[{"code":"TOOMANYREQUESTS"}]}',
                                   {"Retry-After": retry_after} if retry_after else {})
        via_cdn = host.startswith("localhost:")
        if self.bearer and not via_cdn and h.headers.get("Authorization") != f"Bearer {self.token}":
            realm = f'Bearer realm="http://127.0.0.1:{self.port}/token",service="test-registry"'
            if h.path != "/v2/":
                repo = h.path[4:].split("/manifests/")[0].split("/blobs/")[0]
                realm += f',scope="repository:{repo}:pull"'
            return self._reply(h, 401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": realm})
        if self.redirect_blobs and "/blobs/" in h.path and not via_cdn:
            target = self.redirect_to or f"http://localhost:{self.port}"
            return self._reply(h, 307, b"", {"Location": target + h.path})
        self._forward(h)

    def _token(self, h: BaseHTTPRequestHandler) -> None:
        if self.token_creds:
            want = "Basic " + base64.b64encode(":".join(self.token_creds).encode()).decode()
            if h.headers.get("Authorization") != want:
                return self._reply(h, 401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {})
        self._reply(h, 200, json.dumps({"token": self.token, "expires_in": 300}).encode(),
                    {"Content-Type": "application/json"})

    def _reply(self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _forward(self, h: BaseHTTPRequestHandler) -> None:
        headers = {k: h.headers[k] for k in ("Accept", "Range") if h.headers.get(k)}
        up = requests.request(h.command, self.upstream + h.path, headers=headers, stream=True,
                              allow_redirects=False, timeout=30)
        digest = h.path.rsplit("/", 1)[-1] if "/blobs/" in h.path else None
        body = up.raw.read() if h.command != "HEAD" else b""
        h.send_response(up.status_code)
        for k in ("Content-Type", "Docker-Content-Digest", "Content-Range", "Accept-Ranges", "Location",
                  "WWW-Authenticate"):
            if k == "Content-Type" and self.manifest_type and "/manifests/" in h.path:
                h.send_header(k, self.manifest_type)
            elif k in up.headers:
                h.send_header(k, up.headers[k])
        h.send_header("Content-Length", up.headers.get("Content-Length", str(len(body))))
        h.end_headers()
        if h.command == "HEAD":
            return
        if digest in self.corrupt and body:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        if digest and self.cut.get(digest, 0) > 0 and up.status_code in (200, 206):
            self.cut[digest] -= 1
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.connection.shutdown(socket.SHUT_RDWR)  # the client sees the body end early
            h.close_connection = True
            return
        h.wfile.write(body)
