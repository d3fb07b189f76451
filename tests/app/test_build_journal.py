"""A build writes its journal (what `banger ui` shows live): its steps as the image records
them, and a failed build's error."""
from __future__ import annotations

import dataclasses

import pytest

from banger.app.build import run_build, spec_words
from banger.app.cache import usage
from banger.core import journal
from banger.core.errors import BuildError
from banger.core.store import Store
from tests.support_builds import small_build  # noqa: F401  (fixture)


def test_a_build_journals_its_steps_and_its_end(small_build):  # noqa: F811
    dirs, _, spec = small_build
    lines = []
    record = run_build(spec, dirs, log=lines.append)
    (build,) = journal.all_builds(dirs.state)
    assert build.state == "done" and build.words == spec_words(spec)
    assert build.words[1:] == ["name=small", "kernel=k", "boot=no"]
    done = [(e["step"], e["status"]) for e in build.events if e["event"] == "step"]
    assert done == [(s["step"], s["status"]) for s in record.steps]
    started = [e["step"] for e in build.events if e["event"] == "step-start"]
    assert started == [s["step"] for s in record.steps if s["status"] == "ran"]
    assert [e["message"] for e in build.events if e["event"] == "log"] == lines


def test_a_failed_build_journals_its_error(small_build):  # noqa: F811
    dirs, _, spec = small_build
    bad = dataclasses.replace(spec, kernel="no-such-kernel")
    with pytest.raises(BuildError) as exc:
        run_build(bad, dirs)
    (build,) = journal.all_builds(dirs.state)
    assert build.state == "failed" and build.error == str(exc.value)


def test_cache_usage_by_kind_adds_up(small_build):  # noqa: F811
    dirs, _, spec = small_build
    run_build(spec, dirs)
    u = usage(Store(dirs.cache, dirs.trees))
    assert sum(u["kinds"].values()) == u["total"]
    assert u["kinds"]["layers"] > 0 and u["kinds"]["images"] > 0 and u["kinds"]["kernels"] > 0
