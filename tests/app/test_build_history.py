"""An image keeps the history of its builds: a cached rebuild no longer hides what the build that
made the artifacts ran and how long it took, and built_at stays when the artifacts were made."""
from __future__ import annotations

import dataclasses
import json

from banger.app.build import run_build
from banger.core import images
from banger.core.store import Store
from tests.support_builds import banger, small_build  # noqa: F401 (a fixture)


def test_a_cached_rebuild_keeps_the_made_time_and_both_builds(small_build):
    dirs, env, spec = small_build
    first = run_build(spec, dirs)
    again = run_build(spec, dirs)
    assert {s["status"] for s in again.steps} == {"cached"}
    assert again.built_at == first.built_at  # nothing was made again
    history = again.history()
    assert len(history) == 2
    assert any(s["status"] == "ran" for s in history[0]["steps"])
    assert {s["status"] for s in history[1]["steps"]} == {"cached"} and history[1]["at"] > history[0]["at"]
    # a build that makes something new moves built_at
    bigger = run_build(dataclasses.replace(spec, size=64 << 20), dirs)
    assert bigger.built_at > first.built_at and len(bigger.history()) == 3
    # the CLI shows it
    out = banger(env, "image", "history", "small")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("image small: 3 build(s) kept") and " steps cached (" in lines[2]
    assert "ran" in lines[1] and "ext4" in lines[3]
    doc = json.loads(banger(env, "image", "history", "small", "--json").stdout)
    assert len(doc["builds"]) == 3 and doc["built_at"] == bigger.built_at


def test_the_history_is_bounded(small_build):
    dirs, _, spec = small_build
    record = run_build(spec, dirs)
    store = Store(dirs.cache)
    record.extra[images.HISTORY] = [{"at": float(i), "digest": "d", "steps": []} for i in range(images.HISTORY_MAX)]
    images.save(store, record)
    again = run_build(spec, dirs)
    assert len(again.history()) == images.HISTORY_MAX and again.history()[-1]["at"] > 1000


def test_a_record_from_before_the_history_shows_its_last_build(small_build):
    dirs, _, spec = small_build
    record = run_build(spec, dirs)
    del record.extra[images.HISTORY]
    assert record.history() == [{"at": record.built_at, "digest": record.digest, "steps": record.steps}]
