"""A damaged action record (bad UTF-8, wrong keys, wrong types, content not matching its key) is
corrupt: the build removes it, reruns the step and says so; `cache verify` reports and removes it."""
from __future__ import annotations

import json

import pytest

from banger.app import build as build_app
from banger.core.store import Store
from tests.support_builds import banger, small_build  # noqa: F401  (a fixture)


def _edit(change):
    def corrupt(data: bytes) -> bytes:
        doc = json.loads(data)
        change(doc)
        return json.dumps(doc).encode()
    return corrupt


CORRUPTIONS = {
    "bad UTF-8": (lambda data: data.replace(b'"step"', b'"st\xffp"', 1), "not UTF-8"),
    "not JSON": (lambda data: data[: len(data) // 2], "not valid JSON"),
    "a wrong key": (_edit(lambda d: d.update(outputz=d.pop("outputs"))), "missing field outputs; unknown field outputz"),
    "outputs of the wrong type": (_edit(lambda d: d.update(outputs=list(d["outputs"].values()))),
                                  "a field has the wrong type"),
    "an output of the wrong type": (_edit(lambda d: d["outputs"].update(image=5)), "an output is not a digest"),
    "a param changed": (_edit(lambda d: d["params"].update(size=1 << 30)), "its content does not match its key"),
}


@pytest.mark.parametrize("how", list(CORRUPTIONS))
def test_a_damaged_record_is_removed_reported_and_rebuilt(small_build, how):
    dirs, env, spec = small_build
    first = build_app.run_build(spec, dirs, log=lambda m: None)
    key = next(s["key"] for s in first.steps if s["step"] == "ext4")
    store = Store(dirs.cache, dirs.trees)
    path = store.root / "actions" / key[:2] / f"{key}.json"
    corrupt, why = CORRUPTIONS[how]
    good = path.read_bytes()

    path.write_bytes(corrupt(good))
    verify = banger(env, "cache", "verify")
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert f"corrupt (removed): action record {key} ({why})" in verify.stdout.splitlines()
    assert "Traceback" not in verify.stderr and not path.exists()

    path.write_bytes(corrupt(good))
    lines: list[str] = []
    again = build_app.run_build(spec, dirs, log=lines.append)
    status = {s["step"]: s["status"] for s in again.steps}
    assert status["ext4"] == "ran" and status["ownership"] == "cached"  # same tree, same image bytes
    assert f"ext4: its cached record was damaged ({why}); removed it, the step runs again" in lines
    assert again.artifacts == first.artifacts
    assert json.loads(path.read_bytes())["outputs"] == json.loads(good)["outputs"]  # written anew


def test_gc_removes_a_damaged_record_and_says_so(small_build):
    dirs, env, spec = small_build
    first = build_app.run_build(spec, dirs, log=lambda m: None)
    key = next(s["key"] for s in first.steps if s["step"] == "ownership")
    path = Store(dirs.cache, dirs.trees).root / "actions" / key[:2] / f"{key}.json"
    path.write_bytes(b"\xff" + path.read_bytes())
    gc = banger(env, "cache", "gc")
    assert gc.returncode == 0, gc.stderr
    assert "removed 1 damaged action record (their steps run again at the next build)" in gc.stdout
    assert not path.exists()
    again = build_app.run_build(spec, dirs, log=lambda m: None)
    assert {s["step"]: s["status"] for s in again.steps}["ownership"] == "ran"
    assert again.artifacts == first.artifacts
