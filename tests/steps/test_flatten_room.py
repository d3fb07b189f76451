"""A layer that unpacks to far more than its compressed size (1.5 MB of gzip holding 1.5 GiB of
zeros) must not fill the RAM the tree is flattened into: the room is checked against the
uncompressed sizes as the layer streams, and flatten stops with one line before writing them.
The room is made small (a parameter, or a small tmpfs mounted in the test's temporary dir)."""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support_tools import small_tmpfs

from banger.core.errors import BuildError
from banger.core.store import Store
from banger.engine import doit_runner
from banger.engine.tasks import Build
from banger.steps import flatten
from banger.steps.flatten import flatten_layers
from tests.support_layers import blob, file, tar_bytes

MiB = 1 << 20


def zeros_layer(directory: Path, files: dict[str, int]):
    """A gzip layer of files of zeros (name -> size): a few KB that unpack to the sum of the sizes."""
    return blob(directory, tar_bytes([file(name, bytes(size)) for name, size in files.items()]))


def test_room_counts_what_the_layers_unpack_to_and_stops_before_writing_it(tmp_path):
    path, mt, diff_id = zeros_layer(tmp_path, {f"f{i}": MiB for i in range(8)})
    assert path.stat().st_size < 64 << 10
    stage = tmp_path / "stage"
    stage.mkdir()
    with pytest.raises(BuildError) as exc:
        flatten_layers([(path, mt, diff_id)], stage / "rootfs", stage / "fsmeta.jsonl", room=5 * MiB + 100)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"layer 1/1 ({diff_id[:19]}) unpacks to more than the 5.0M free for the flattened tree on ")
    assert "(stopped at 'f5', 1.0M);" in msg and msg.endswith("flatten it on disk with BANGER_TREES_DIR=cache")
    assert sorted(p.name for p in (stage / "rootfs").iterdir()) == [f"f{i}" for i in range(5)]
    # the same layer fits a room of 8 MiB; without a room (on disk) there is no limit
    for n, room in enumerate((8 * MiB, None)):
        (tmp_path / f"s{n}").mkdir()
        flatten_layers([(path, mt, diff_id)], tmp_path / f"s{n}" / "rootfs", tmp_path / f"s{n}" / "m", room=room)


def test_the_room_is_for_all_layers_together(tmp_path):
    layers = [zeros_layer(tmp_path, {f"l{n}": 3 * MiB}) for n in range(3)]
    (tmp_path / "s").mkdir()
    with pytest.raises(BuildError, match=r"^layer 3/3 .* \(stopped at 'l2', 3\.0M\);"):
        flatten_layers(layers, tmp_path / "s" / "rootfs", tmp_path / "s" / "m", room=8 * MiB)


def test_a_bomb_layer_stops_the_flatten_step_before_it_fills_ram(tmp_path):
    """8 MiB of RAM (6 MiB of room: a quarter stays free): a 7 MiB file would fit the tmpfs
    but not the room; the step fails with one line, leaves nothing in RAM and caches nothing."""
    with small_tmpfs(tmp_path / "ram", "8m", mode="0700") as ram:
        store = Store(tmp_path / "cache", volatile=ram)
        path, mt, diff_id = zeros_layer(tmp_path, {"etc/hostname": 6, "zeros": 7 * MiB})
        size = path.stat().st_size
        desc = {"mediaType": mt, "digest": store.ingest_file(path, "sha256"), "size": size}
        build = Build(store, log=lambda msg: None)
        build.context["image"] = SimpleNamespace(layers=[desc], diff_ids=[diff_id])

        def task_gen():
            yield {"basename": "fetch", "actions": None}
            yield from flatten.tasks(build, None)
            yield {"basename": "build", "actions": None, "task_dep": ["flatten"]}
        assert doit_runner.run(build, task_gen, tmp_path / "doit.db") != 0
        assert build.error is not None and "\n" not in build.error
        assert build.error.startswith(f"layer 1/1 ({diff_id[:19]}) unpacks to more than the ")
        assert f"free for the flattened tree on {ram} (stopped at 'zeros', 7.0M);" in build.error
        assert list(store.records()) == []
        assert list((store.root / "staging").iterdir()) == []
        assert list((ram / "staging").iterdir()) == [] and list((ram / "trees").iterdir()) == []


def test_a_ram_dir_without_room_sends_the_tree_to_disk(tmp_path):
    """Less free than the quarter kept free: the tree is made in the cache, whatever its size."""
    with small_tmpfs(tmp_path / "ram", "8m", mode="0700") as ram:
        (ram / "filler").write_bytes(bytes(7 * MiB))
        store = Store(tmp_path / "cache", volatile=ram)
        path, mt, diff_id = zeros_layer(tmp_path, {"etc/hostname": 6, "zeros": 2 * MiB})
        desc = {"mediaType": mt, "digest": store.ingest_file(path, "sha256"), "size": 0}  # no size: no estimate
        build = Build(store, log=lambda msg: None)
        build.context["image"] = SimpleNamespace(layers=[desc], diff_ids=[diff_id])

        def task_gen():
            yield {"basename": "fetch", "actions": None}
            yield from flatten.tasks(build, None)
            yield {"basename": "build", "actions": None, "task_dep": ["flatten"]}
        assert doit_runner.run(build, task_gen, tmp_path / "doit.db") == 0, build.error
        tree = store.path(build.output("flatten", "tree"))
        assert tree.is_relative_to(store.root) and (tree / "zeros").stat().st_size == 2 * MiB
