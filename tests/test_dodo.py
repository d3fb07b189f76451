"""The doit face of a checkout (dodo.py): `doit list` shows the pipeline's steps, in order, with
their docs; `doit build` without an image says how to call it, naming the doit command."""
from __future__ import annotations

import os
import subprocess
import sys

from banger.steps import pipeline
from tests.support_tools import REPO


def doit(*args: str, cache) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "doit", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "BANGER_CACHE_DIR": str(cache)}, timeout=120)


def test_doit_list_shows_the_steps_in_pipeline_order_with_their_docs(tmp_path):
    proc = doit("list", cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    rows = [line.split(None, 1) for line in proc.stdout.splitlines() if line.strip()]
    assert [r[0] for r in rows] == [*pipeline.STEPS, "build"]
    assert all(len(r) == 2 and r[1].strip() for r in rows), rows


def test_doit_build_without_an_image_names_the_doit_command_and_builds_nothing(tmp_path):
    for target in ("build", "flatten"):
        proc = doit(target, cache=tmp_path / "cache")
        assert proc.returncode != 0
        assert "error: no image given; use e.g. `doit build image=debian:bookworm`" in proc.stdout
        assert "banger build" not in proc.stdout + proc.stderr
    assert not (tmp_path / "cache").exists()
