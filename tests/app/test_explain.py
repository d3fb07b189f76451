"""--explain names the parts of an input that changed (template files), from the record's info."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from banger.app.build import _changed_parts
from banger.core import config
from banger.kernel import sources
from tests.support_kernel import make_kernel_tree
from tests.support_registry import make_image
from tests.support_tools import REPO, need


def test_changed_parts_are_named_added_removed_or_changed():
    before = {"a.j2": "blake3:1", "b.j2": "blake3:2", "gone.j2": "blake3:3"}
    after = {"a.j2": "blake3:1", "b.j2": "blake3:9", "new.j2": "blake3:4"}
    assert _changed_parts(before, after) == "b.j2 changed, gone.j2 removed, new.j2 added"


def test_unknown_or_equal_parts_say_nothing_so_the_digests_are_shown():
    assert _changed_parts(None, {"a.j2": "blake3:1"}) == ""  # a record written before parts were kept
    assert _changed_parts({"a.j2": "blake3:1"}, {"a.j2": "blake3:1"}) == ""  # e.g. only params changed


def test_explain_after_a_template_edit_names_the_file_through_a_real_build(tmp_path):
    """A real boot=no build of a small OCI image, one template edited, then --explain: inject says
    which template changed (from the parts in its record's info), the steps before it are cached."""
    need("mkfs.ext4", "debugfs", "depmod")
    layout = tmp_path / "layout"
    make_image(layout, "v1", {"etc/os-release": b"ID=small\n", "etc/inittab": b"::sysinit:/etc/init.d/rcS\n",
                              "bin/hello": b"#!/bin/sh\necho hi\n"})
    dirs = config.Dirs(cache=tmp_path / "cache", state=tmp_path / "state" / "banger",
                       config=tmp_path / "config" / "banger")
    sources.import_dir(dirs, "k", make_kernel_tree(tmp_path / "kernel-src", "6.1.0-99-amd64"))
    templates = shutil.copytree(REPO / "templates", tmp_path / "templates")
    env = {**os.environ, "BANGER_CACHE_DIR": str(dirs.cache), "XDG_STATE_HOME": str(tmp_path / "state"),
           "XDG_CONFIG_HOME": str(tmp_path / "config"), "BANGER_TEMPLATES_DIR": str(templates)}
    words = [sys.executable, "-m", "banger", "build", f"image=oci-layout:{layout}:v1", "name=t", "kernel=k",
             "boot=no"]

    first = subprocess.run(words, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    with open(templates / "network.sh.j2", "a") as f:
        f.write("# an edit\n")
    proc = subprocess.run([*words, "--explain"], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in proc.stdout.splitlines() if line.strip()}
    assert rows["inject"] == ["will-run", "input assets: network.sh.j2 changed"], proc.stdout
    assert all(rows[s][0] == "cached" for s in ("flatten", "ext4", "ownership")), proc.stdout
