"""The content-addressed store: ingest, verification, records, locking."""
import hashlib
import os
import threading
import time

import pytest

from banger.core import digest as dg
from banger.core.store import Store, StoreError, action_key


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def leftovers(store: Store):
    return [p for p in (store.root / "staging").rglob("*")]


def test_ingest_stream_places_blob_under_its_digest(tmp_path):
    store = Store(tmp_path)
    data = b"hello layer" * 1000
    d = store.ingest_stream([data[:5000], data[5000:]], expected=sha(data), size=len(data))
    assert d == sha(data)
    assert store.path(d) == tmp_path / "blobs" / "sha256" / d.split(":")[1]
    assert store.path(d).read_bytes() == data
    assert store.verify(d, full=True)


def test_ingest_rejects_wrong_digest_and_leaves_nothing(tmp_path):
    store = Store(tmp_path)
    wrong = sha(b"something else")
    with pytest.raises(StoreError, match="digest mismatch"):
        store.ingest_stream([b"payload"], expected=wrong)
    assert not store.path(wrong).exists()
    assert list((tmp_path / "blobs").rglob("*")) == []
    assert leftovers(store) == []


def test_ingest_rejects_wrong_size_and_leaves_nothing(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(StoreError, match="size mismatch"):
        store.ingest_stream([b"payload"], expected=sha(b"payload"), size=3)
    assert list((tmp_path / "blobs").rglob("*")) == []
    assert leftovers(store) == []


def test_corruption_is_detected_by_a_new_process_and_the_blob_removed(tmp_path):
    d = Store(tmp_path).ingest_stream([b"x" * 4096], algorithm="blake3")
    path = Store(tmp_path).path(d)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:  # flip one byte, same size
        f.seek(100)
        f.write(b"y")
    fresh = Store(tmp_path)  # a new process trusts nothing it has not checked
    assert not fresh.verify(d)
    assert not path.exists()


def test_unchanged_blob_is_trusted_by_stamp_without_rehash(tmp_path, monkeypatch):
    d = Store(tmp_path).ingest_stream([b"z" * 4096])
    fresh = Store(tmp_path)
    monkeypatch.setattr(dg, "of_file", lambda *a: (_ for _ in ()).throw(AssertionError("rehashed")))
    assert fresh.verify(d)


def test_full_verify_catches_corruption_that_kept_the_stamp(tmp_path):
    store = Store(tmp_path)
    d = store.ingest_stream([b"a" * 4096])
    path = store.path(d)
    st = path.stat()
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(b"b")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.chmod(path, 0o444)
    assert not Store(tmp_path).verify(d, full=True)


def test_action_key_covers_every_input_and_nothing_else():
    base = dict(step="s", step_version="1", inputs={"a": "sha256:" + "0" * 64}, params={"p": 1}, tools={"t": "1"})
    k = action_key(**base)
    assert k == action_key(**dict(base))
    for field, value in [("step_version", "2"), ("inputs", {"a": "sha256:" + "1" * 64}),
                         ("params", {"p": 2}), ("tools", {"t": "2"})]:
        assert action_key(**{**base, field: value}) != k


def test_lock_serialises_holders_of_the_same_key(tmp_path):
    store = Store(tmp_path)
    events = []

    def hold(name):
        with Store(tmp_path).lock("k"):
            events.append(f"{name}-in")
            time.sleep(0.2)
            events.append(f"{name}-out")

    threads = [threading.Thread(target=hold, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert events[0][0] == events[1][0] and events[2][0] == events[3][0]
    assert store.root.joinpath("locks", "k.lock").exists()


def test_a_write_deep_inside_a_tree_is_caught_before_a_step_reads_it(tmp_path):
    tree = tmp_path / "t"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_bytes(b"content")
    store = Store(tmp_path / "c")
    d = store.ingest_tree(tree)
    assert store.verify_for_use(d)  # made by this process
    (store.path(d) / "a" / "b" / "f").write_bytes(b"CONTENT")
    fresh = Store(tmp_path / "c")  # the next process rehashes before use
    assert not fresh.verify_for_use(d)
    assert not store.path(d).exists()


def test_trees_go_to_the_ram_dir_only_when_it_is_private_and_has_room(tmp_path, monkeypatch, ram_dir):
    from banger.core import config

    monkeypatch.delenv(config.TREES_ENV, raising=False)
    ram = config.volatile_trees_dir(tmp_path / "cache")
    assert ram is not None and ram.parent == config.SHM and ram.name.startswith(f"banger-{os.getuid()}-")
    monkeypatch.setenv(config.TREES_ENV, "cache")
    assert config.volatile_trees_dir(tmp_path / "cache") is None

    store = Store(tmp_path / "cache", volatile=ram_dir)
    with store.tree_staging(1 << 20) as stage:
        assert stage.is_relative_to(ram_dir)
    with store.tree_staging(1 << 60) as stage:  # no room: the cache's own staging
        assert stage.is_relative_to(tmp_path / "cache" / "staging")
    os.chmod(ram_dir, 0o777)  # not private (someone else could swap a tree): not used
    with store.tree_staging(1 << 20) as stage:
        assert stage.is_relative_to(tmp_path / "cache" / "staging")


def test_ram_dirs_of_deleted_cache_dirs_are_swept(tmp_path, ram_dir):
    ram = ram_dir
    ram.mkdir()
    live_cache, gone_cache = tmp_path / "live", tmp_path / "gone"
    stores = {name: Store(cache, volatile=ram / f"banger-7-{name}") for name, cache in
              (("live", live_cache), ("gone", gone_cache), ("me", tmp_path / "me"))}
    for store in stores.values():
        with store.tree_staging(1):  # makes the RAM dir
            pass
        store.evict_volatile_trees()
    import shutil
    shutil.rmtree(gone_cache)
    stores["me"].evict_volatile_trees()
    assert sorted(p.name for p in ram.iterdir()) == ["banger-7-live", "banger-7-me"]


def test_ram_staging_of_a_killed_build_is_swept(tmp_path, ram_dir):
    import subprocess

    store = Store(tmp_path / "cache", volatile=ram_dir)
    with store.tree_staging(1) as mine:
        dead = subprocess.Popen(["true"])
        dead.wait()
        orphan = ram_dir / "staging" / f"tree-{dead.pid}-abc"
        (orphan / "rootfs").mkdir(parents=True)
        store.evict_volatile_trees()
        assert mine.exists() and not orphan.exists()
