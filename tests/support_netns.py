"""A network namespace of the test's own: bridges, taps, nft rules and VMs made inside it never
touch the host's network, and nothing sent inside it leaves it (it has no uplink)."""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from typing import Iterator

import pytest


def ns_pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@contextlib.contextmanager
def own_namespace(why: str) -> Iterator[str]:
    """`ip netns add banger-test-<random>` with `lo` up; on exit whatever still runs in it is
    killed and it is deleted. Skips (saying `why` needs it) without root, ip/nft or netns support."""
    if os.geteuid() != 0:
        pytest.skip(f"{why} need root (the test creates a network namespace)")
    missing = [t for t in ("ip", "nft") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing host tools: {', '.join(missing)} (scripts/setup.sh installs them)")
    name = f"banger-test-{secrets.token_hex(4)}"
    proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"`ip netns add` is unavailable here: {proc.stderr.strip()}")
    try:
        up = subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
                            capture_output=True, text=True)
        if up.returncode != 0:
            pytest.skip(f"`ip netns exec` is unavailable here: {up.stderr.strip()}")
        yield name
    finally:
        for _ in range(50):
            pids = ns_pids(name)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, text=True)
