"""A real, small build for tests that need one: a one-layer OCI layout image, a fake kernel bundle,
boot=no (a few seconds), and the `banger` CLI run against the same cache."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from banger.core import config
from banger.engine.spec import parse_words
from banger.kernel import sources
from tests.support_kernel import make_kernel_tree
from tests.support_registry import make_image
from tests.support_tools import REPO, need

@pytest.fixture
def small_build(tmp_path):
    """(dirs, env, spec) for a real boot=no build of a small OCI image."""
    need("mkfs.ext4", "debugfs", "depmod")
    layout = tmp_path / "layout"
    make_image(layout, "v1", {"etc/os-release": b"ID=small\n", "etc/inittab": b"::sysinit:/etc/init.d/rcS\n",
                              "bin/hello": b"#!/bin/sh\necho hi\n"})
    dirs = config.Dirs(cache=tmp_path / "cache", state=tmp_path / "state" / "banger",
                       config=tmp_path / "config" / "banger")
    sources.import_dir(dirs, "k", make_kernel_tree(tmp_path / "kernel-src", "6.1.0-99-amd64"))
    env = {**os.environ, "BANGER_CACHE_DIR": str(dirs.cache), "XDG_STATE_HOME": str(tmp_path / "state"),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    spec = parse_words([f"image=oci-layout:{layout}:v1", "name=small", "kernel=k", "boot=no"])
    return dirs, env, spec


def banger(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "banger", *args], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=300)
