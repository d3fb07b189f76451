"""`cache gc` during a real build (it waits for it, or refuses), and gc/`image show`/`image list`
with a damaged images/NAME.json (nothing evicted, one line naming the fix)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from banger.app import build as build_app
from banger.app import cache as cache_ops
from banger.core import images
from banger.core.store import Store
from banger.steps import ext4
from tests.app.test_cache import make_chain
from tests.support_builds import banger, small_build  # noqa: F401  (a fixture)
from tests.support_tools import REPO


def test_gc_during_a_build_refuses_with_wait_0_and_otherwise_waits_for_it(small_build, monkeypatch):
    """gc runs in the middle of the build (after ext4 read the tree, before the steps that read
    flatten's metadata and name the image): nothing the build made may go."""
    dirs, env, spec = small_build
    real = ext4.build_ext4
    seen: dict = {}

    def build_then_gc(*args, **kwargs):
        info = real(*args, **kwargs)
        seen["refused"] = banger(env, "cache", "gc", "--wait", "0")
        gc = subprocess.Popen([sys.executable, "-m", "banger", "cache", "gc"], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        seen["gc"], seen["first_line"] = gc, gc.stderr.readline()  # blocks until gc says it waits (or ends)
        return info

    monkeypatch.setattr(ext4, "build_ext4", build_then_gc)
    record = build_app.run_build(spec, dirs, log=lambda m: None)

    refused = seen["refused"]
    assert refused.returncode == 1
    assert refused.stderr.strip() == ("error: 1 build still running; nothing was evicted: run `banger cache gc` "
                                      "again when they finish (or give --wait SECONDS)")
    assert seen["first_line"].strip() == ("waiting for 1 running build to finish "
                                          "(up to 600 s; --wait SECONDS changes that)")
    out, err = seen["gc"].communicate(timeout=300)
    assert seen["gc"].returncode == 0, err
    store = Store(dirs.cache, dirs.trees)
    assert store.verify(record.artifacts["rootfs"], full=True)
    for s in record.steps:  # the image is fully cached: every record there, every blob output intact
        r = store.get_record(s["key"])
        assert r is not None and store.record_valid(r), s["step"]
    again = build_app.run_build(spec, dirs, log=lambda m: None)
    assert {s["status"] for s in again.steps} == {"cached"}


def test_a_damaged_image_record_is_fixed_by_building_the_image_again_from_cache(small_build):
    """The fix the line names first: the same build words rewrite the record, every step cached."""
    dirs, env, spec = small_build
    first = build_app.run_build(spec, dirs, log=lambda m: None)
    store = Store(dirs.cache, dirs.trees)
    path = store.root / "images" / "small.json"
    hexpart = first.artifacts["rootfs"].split(":")[1]
    path.write_text(path.read_text().replace(hexpart, hexpart[::-1]))  # still JSON, names no rootfs we have

    gc = banger(env, "cache", "gc")
    assert gc.returncode == 1
    assert gc.stderr.startswith("error: nothing was evicted: image small's record")
    assert f"`banger build image={spec.image} name=small` (its steps are still cached)" in gc.stderr
    assert store.path(first.artifacts["rootfs"]).exists()

    again = build_app.run_build(spec, dirs, log=lambda m: None)
    assert {s["status"] for s in again.steps} == {"cached"}
    assert images.load(store, "small").artifacts == first.artifacts
    assert banger(env, "cache", "gc").returncode == 0
    assert store.verify(first.artifacts["rootfs"], full=True)


FLIPS = {
    "a brace": lambda text: text.replace("{", "[", 1),
    "a hex digit of the rootfs digest": None,  # valid JSON still: only the checksum notices
    "a byte that is no UTF-8": lambda text: text.replace('"ref"', '"r\udcffef"', 1),
    "a field name": lambda text: text.replace('"artifacts"', '"artifacte"', 1),
}


@pytest.mark.parametrize("flip", list(FLIPS))
def test_a_damaged_image_record_evicts_nothing_and_is_reported_in_one_line(tmp_path, flip):
    store = Store(tmp_path / "cache")
    image = make_chain(store, "big", 4096)
    orphan = store.ingest_stream([b"orphan" * 100], algorithm="blake3")
    path = store.root / "images" / "big.json"
    text = path.read_bytes().decode()
    hexpart = image.artifacts["rootfs"].split(":")[1]
    other = hexpart[:10] + ("0" if hexpart[10] != "0" else "1") + hexpart[11:]
    damaged = (FLIPS[flip] or (lambda t: t.replace(hexpart, other)))(text)
    assert damaged != text
    path.write_bytes(damaged.encode("utf-8", "surrogateescape"))

    with pytest.raises(cache_ops.CacheError) as exc:
        cache_ops.gc(store)
    assert str(exc.value).startswith("nothing was evicted: image big's record")
    assert store.path(image.artifacts["rootfs"]).exists() and store.path(orphan).exists()
    for s in image.steps:
        assert store.get_record(s["key"]) is not None

    env = {**os.environ, "BANGER_CACHE_DIR": str(store.root), "XDG_STATE_HOME": str(tmp_path / "state"),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    show = banger(env, "image", "show", "big")
    assert show.returncode == 1 and "Traceback" not in show.stderr
    assert len(show.stderr.strip().splitlines()) == 1
    assert "is damaged" in show.stderr and "`banger image rm big`" in show.stderr
    listing = banger(env, "image", "list")
    assert listing.returncode == 0, listing.stderr
    assert [line.split()[:2] for line in listing.stdout.splitlines()] == [["big", "DAMAGED"]]
    gc = banger(env, "cache", "gc")
    assert gc.returncode == 1 and len(gc.stderr.strip().splitlines()) == 1 and "nothing was evicted" in gc.stderr

    images.remove(store, "big")  # one fix the line names; gc then collects as usual
    cache_ops.gc(store)
    assert not store.path(image.artifacts["rootfs"]).exists() and not store.path(orphan).exists()


def test_an_image_record_saved_by_this_banger_round_trips_with_its_checksum(tmp_path):
    store = Store(tmp_path / "cache")
    image = make_chain(store, "fine", 100)
    loaded = images.load(store, "fine")
    assert (loaded.artifacts, loaded.steps, loaded.ref) == (image.artifacts, image.steps, image.ref)
    assert images.CHECKSUM in loaded.extra
    images.save(store, loaded)  # saving a loaded record again keeps it readable
    assert images.scan(store) == ([loaded], [])
