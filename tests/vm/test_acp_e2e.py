"""`banger vm acp` against the real opencode on one real VM (QEMU under TCG, the Debian test
image): opencode's own npm platform package (fetched once with `npm pack`, cached under the test
fixtures), copied to /root/.opencode/bin in the guest, answers an ACP `initialize` JSON-RPC
request sent over `banger vm acp`'s stdio, and stdout carries nothing but JSON-RPC. The guest
has no default route and no DNS server while opencode runs, so nothing leaves the machine.
"""
from __future__ import annotations

import json
import os
import platform
import select
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from tests.support_tools import REPO
from tests.vm.test_vm_e2e import banger, env  # noqa: F401  (env: the module's fixture)

pytestmark = pytest.mark.slow
OPENCODE_VERSION = "1.18.33"
# opencode's npm wrapper (opencode-ai) picks one of these per host; "baseline" needs no AVX2
PLATFORM_PACKAGES = {"x86_64": "opencode-linux-x64-baseline", "aarch64": "opencode-linux-arm64"}
VM = "acp"
INITIALIZE = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
              "params": {"protocolVersion": 1, "clientCapabilities": {
                  "fs": {"readTextFile": False, "writeTextFile": False}, "terminal": False}}}


@pytest.fixture(scope="module")
def opencode_package(fixture_cache) -> Path:
    """opencode's platform package (a .tgz holding package/bin/opencode), fetched with `npm pack`
    into a throwaway npm cache the first time, then kept under the fixture cache."""
    package = PLATFORM_PACKAGES.get(platform.machine())
    if package is None:
        pytest.skip(f"opencode publishes no Linux package for {platform.machine()}")
    cached = fixture_cache / "opencode" / f"{package}-{OPENCODE_VERSION}.tgz"
    if cached.exists():
        return cached
    if shutil.which("npm") is None:
        pytest.skip(f"{cached.name} is not cached and npm is not installed to fetch it (scripts/setup.sh installs npm)")
    with tempfile.TemporaryDirectory(prefix="banger-npm-") as tmp:
        try:
            proc = subprocess.run(["npm", "pack", "--silent", f"{package}@{OPENCODE_VERSION}", "--pack-destination", tmp],
                                  capture_output=True, text=True, timeout=600, cwd=tmp,
                                  env={**os.environ, "npm_config_cache": str(Path(tmp) / "npm-cache"),
                                       "npm_config_update_notifier": "false"})
        except subprocess.TimeoutExpired:
            pytest.skip(f"npm could not fetch {package}@{OPENCODE_VERSION} within 10 minutes")
        got = Path(tmp) / f"{package}-{OPENCODE_VERSION}.tgz"
        if proc.returncode != 0 or not got.exists():
            said = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            pytest.skip(f"npm could not fetch {package}@{OPENCODE_VERSION}: {said}")
        with tarfile.open(got) as tar:  # a package that fetched but is not what we expect: fail
            binary = tar.getmember("package/bin/opencode")
            assert binary.isfile() and binary.size > 10 * 2**20, binary
        cached.parent.mkdir(parents=True, exist_ok=True)
        staged = cached.with_name(f".{cached.name}.{os.getpid()}")
        shutil.copyfile(got, staged)
        os.replace(staged, cached)
    return cached


def guest(env, script: str, stdin=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`sh -c script` in the guest through the ssh config banger manages; stdin from a file."""
    proc = subprocess.run(["ssh", "-F", str(env["ssh_config"]), "-o", "BatchMode=yes", f"{VM}.vm", script],
                          stdin=stdin if stdin is not None else subprocess.DEVNULL, capture_output=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{script!r}: {proc.returncode} {proc.stderr.decode()[-2000:]}"
    return proc


def read_line(proc: subprocess.Popen, timeout: float) -> bytes:
    """One line of proc's stdout, or b"" at EOF; fails after `timeout` seconds with nothing."""
    fd, buf, end = proc.stdout.fileno(), b"", time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
        if not ready:
            raise AssertionError(f"no line from `banger vm acp` within {timeout:.0f} s (so far {buf[-500:]!r})")
        chunk = os.read(fd, 1)
        if not chunk:
            break
        buf += chunk
    return buf


def test_vm_acp_bridges_an_acp_initialize_to_the_real_opencode_and_back(env, opencode_package):  # noqa: F811
    banger(env["vars"], "vm", "create", "vmtest", "--name", VM, "--vcpus", "2", "--memory", "1G", "--disk-size", "2G")
    with open(opencode_package, "rb") as tgz:
        guest(env, "mkdir -p /root/.opencode/bin && tar -xzf - -O package/bin/opencode > /root/.opencode/bin/opencode "
                   "&& chmod 755 /root/.opencode/bin/opencode", stdin=tgz)
    # offline from here on: only the host's forwarded ssh (an on-link peer) reaches the guest
    guest(env, "ip route del default 2>/dev/null; : > /etc/resolv.conf; ! ip route get 1.1.1.1 >/dev/null 2>&1")
    assert guest(env, "/root/.opencode/bin/opencode --version", timeout=600).stdout.decode().strip() == OPENCODE_VERSION

    bridge = subprocess.Popen([sys.executable, "-m", "banger", "vm", "acp", VM], cwd=REPO, env={**os.environ, **env["vars"]},
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        bridge.stdin.write(json.dumps(INITIALIZE).encode() + b"\n")
        bridge.stdin.flush()
        line = read_line(bridge, timeout=600)
        reply = json.loads(line)  # the first line on stdout is the reply: no banner, no ssh chatter
        assert reply["jsonrpc"] == "2.0" and reply["id"] == 0 and "error" not in reply, reply
        result = reply["result"]
        assert result["protocolVersion"] == 1 and result["agentInfo"]["name"] == "OpenCode", result
        assert result["agentInfo"]["version"] == OPENCODE_VERSION and "agentCapabilities" in result
        bridge.stdin.close()  # EOF on the bridge's stdin ends opencode, then ssh, then banger
        assert bridge.wait(120) == 0
        rest = bridge.stdout.read()
        assert all(json.loads(extra) for extra in rest.splitlines()), rest[:2000]
    finally:
        if bridge.poll() is None:
            bridge.kill()
            bridge.wait()
        for stream in (bridge.stdout, bridge.stderr):
            stream.close()
    # it ran as root in /root (the guest has no /root/repo), opencode's own log says
    assert guest(env, "grep -lE 'directory=/root( |$)' /root/.local/share/opencode/log/*.log").stdout.strip()
    banger(env["vars"], "vm", "rm", "--force", VM)
