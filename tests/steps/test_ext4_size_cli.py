"""A size= the image does not fit in, through the real CLI on a real (small) OCI image: one line
that says how much the image needs, and nothing of the failed ext4 step is cached."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from banger.core import config
from banger.kernel import sources
from tests.support_kernel import make_kernel_tree
from tests.support_registry import make_image
from tests.support_tools import REPO, need


def test_too_small_size_names_what_the_image_needs_and_caches_nothing(tmp_path):
    need("mkfs.ext4", "debugfs")
    layout = tmp_path / "layout"
    make_image(layout, "v1", {"etc/os-release": b"ID=small\n", "big": bytes(range(256)) * 8000})
    dirs = config.Dirs(cache=tmp_path / "cache", state=tmp_path / "state" / "banger",
                       config=tmp_path / "config" / "banger")
    sources.import_dir(dirs, "k", make_kernel_tree(tmp_path / "kernel-src", "6.1.0-99-amd64"))
    env = {**os.environ, "BANGER_CACHE_DIR": str(dirs.cache), "XDG_STATE_HOME": str(tmp_path / "state"),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}

    def build(size: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "banger", "build", f"image=oci-layout:{layout}:v1",
                               f"size={size}", "kernel=k", "boot=no"], cwd=REPO, capture_output=True,
                              text=True, env=env, timeout=300)

    for _ in range(2):  # the second time, ext4 runs again: the failure was not cached
        proc = build("1M")
        assert proc.returncode != 0
        out = proc.stdout + proc.stderr
        assert "running ext4" in out, out
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and re.fullmatch(
            r"error: size=1M is too small for this image: it needs at least \d+M; use size=\d+M "
            r"or leave size= out for a content-aware size", errors[0]), out
        assert "mke2fs" not in out
    out = build("64M")
    assert "running ext4" in out.stdout + out.stderr and "too small" not in out.stdout + out.stderr
