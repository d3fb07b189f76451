"""A throwaway local OCI registry (Debian's `docker-registry`) on a free loopback port.

Used by the test-suite and by `banger demo`; never by a normal build.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalRegistry:
    host: str  # "127.0.0.1:PORT"
    root: Path
    process: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(root: Path, htpasswd: Path | None = None, port: int | None = None) -> LocalRegistry:
    """Start a registry storing under `root`; with `htpasswd`, Basic auth is required."""
    binary = shutil.which("docker-registry")
    if binary is None:
        raise RuntimeError("docker-registry is not installed; run: apt-get install docker-registry")
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    auth = ""
    if htpasswd is not None:
        auth = f"auth:\n  htpasswd:\n    realm: banger-test\n    path: {htpasswd}\n"
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        + auth
    )
    log = root / "registry.log"
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    registry = LocalRegistry(f"127.0.0.1:{port}", root, proc, log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()[-500:]}")
        try:
            requests.get(f"{registry.url}/v2/", timeout=1)
            return registry
        except requests.ConnectionError:
            time.sleep(0.05)
    registry.stop()
    raise RuntimeError(f"docker-registry did not answer on {registry.host} within 20 s")
