"""The `smoke_kernel` fixture: vmlinuz of the current Debian cloud kernel, for boots that need
no root filesystem. Fetched with the host's apt configuration and cached on disk."""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support_tools import need

KERNEL_META = "linux-image-cloud-amd64"


@pytest.fixture(scope="session")
def smoke_kernel(fixture_cache) -> Path:
    need("apt-get", "apt-cache", "dpkg-deb", "qemu-system-x86_64")
    dest = fixture_cache / "smoke-kernel" / "vmlinuz"
    if dest.exists():
        return dest
    depends = subprocess.run(["apt-cache", "depends", KERNEL_META], capture_output=True, text=True, check=True)
    package = next(line.split(":", 1)[1].strip() for line in depends.stdout.splitlines()
                   if line.strip().startswith("Depends:"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        subprocess.run(["apt-get", "download", package], cwd=tmp, check=True, capture_output=True)
        deb = next(Path(tmp).glob("*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), f"{tmp}/x"], check=True)
        vmlinuz = next(Path(tmp, "x", "boot").glob("vmlinuz-*"))
        os.replace(vmlinuz, dest)
    return dest
