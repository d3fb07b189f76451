"""A cache written by an earlier banger stays valid: the same build finds every step cached.

The earlier banger is PINNED's tree, taken from this checkout's own git history and run as it was.
Keys and the record format are a promise to every existing cache (and every CI cache that warms
others): a move, a rename or a refactor must keep them. A change that invalidates caches on
purpose (a step VERSION bump, new key inputs) moves PINNED to the commit that made it, and says
so in its message.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from banger.core import config
from banger.kernel import sources
from tests.support_kernel import make_kernel_tree
from tests.support_registry import make_image
from tests.support_tools import REPO, need

PINNED = "7a810ae11cb3c7d3081e14cd3f0acea43d88a324"  # no user's SSH key in the image (the inject step's key)
RELEASE = "6.1.0-99-amd64"


def export_pinned(dest: Path) -> Path:
    """PINNED's banger/ and templates/ under dest (a plain tree: no install, no build)."""
    if subprocess.run(["git", "cat-file", "-e", f"{PINNED}^{{commit}}"], cwd=REPO,
                      capture_output=True).returncode != 0:
        pytest.skip(f"this checkout has no git history with {PINNED[:12]} (a shallow clone or an sdist)")
    archive = subprocess.run(["git", "archive", "--format=tar", PINNED, "banger", "templates"], cwd=REPO,
                             capture_output=True, check=True).stdout
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)  # this repo's own history
    return dest


def build(code_root: Path, env: dict, image: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "banger", "build", f"image={image}", "name=compat",
                           "kernel=k", "boot=no", "--json"], cwd=code_root, capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(code_root)}, timeout=600)
    assert proc.returncode == 0, f"banger in {code_root.name} failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


def test_a_cache_written_by_the_pinned_version_is_fully_cached_now(tmp_path):
    need("git", "mkfs.ext4", "debugfs", "depmod")
    pinned = export_pinned(tmp_path / "pinned")
    layout = tmp_path / "layout"
    make_image(layout, "v1", {"etc/os-release": b"ID=compat\n", "etc/inittab": b"::sysinit:/etc/init.d/rcS\n",
                              "bin/hello": b"#!/bin/sh\necho hi\n",
                              "usr/share/doc/readme": b"x" * 5000})
    dirs = config.Dirs(cache=tmp_path / "cache", state=tmp_path / "state" / "banger",
                       config=tmp_path / "config" / "banger")
    sources.import_dir(dirs, "k", make_kernel_tree(tmp_path / "kernel-src", RELEASE))
    env = {**os.environ, "BANGER_CACHE_DIR": str(dirs.cache), "XDG_STATE_HOME": str(tmp_path / "state"),
           "XDG_CONFIG_HOME": str(tmp_path / "config"),
           # both versions render the pinned templates: this test is about keys, not template edits
           "BANGER_TEMPLATES_DIR": str(pinned / "templates"), "BANGER_TREES_DIR": "cache"}
    image = f"oci-layout:{layout}:v1"

    before = build(pinned, env, image)
    assert {s["status"] for s in before["steps"]} == {"ran"}, before["steps"]

    now = build(REPO, env, image)
    assert [(s["step"], s["status"]) for s in now["steps"]] == [(s["step"], "cached") for s in before["steps"]]
    assert now["digest"] == before["digest"] and now["artifacts"] == before["artifacts"]
