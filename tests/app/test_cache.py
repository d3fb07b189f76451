"""gc honours named images and size/age limits; export/import moves an image between caches."""
import os
import time

import pytest

from banger.app import cache as cache_ops
from banger.app.cache_archive import export_image, import_file
from banger.core import images
from banger.core.store import ActionRecord, Store, action_key


def make_chain(store: Store, tag: str, size: int) -> images.ImageRecord:
    """An image of two steps whose outputs are `size`-byte blobs."""
    steps, prev = [], None
    for step in ("a", "b"):
        out = store.ingest_stream([os.urandom(size)], algorithm="blake3")
        inputs = {"prev": prev} if prev else {"seed": tag}
        key = action_key(step, "1", inputs, {}, {})
        store.put_record(ActionRecord(key, step, "1", inputs, {}, {}, {"out": out}))
        steps.append({"step": step, "status": "ran", "seconds": 0.1, "key": key})
        prev = out
    image = images.ImageRecord(name=tag, ref=f"example/{tag}", digest="sha256:" + "0" * 64,
                               built_at=time.time(), artifacts={"rootfs": prev}, steps=steps)
    images.save(store, image)
    return image


def age(store: Store, digest: str, days: float) -> None:
    t = time.time() - days * 86400
    os.utime(store._stamp(digest), (t, t))


def test_gc_without_limits_keeps_named_images_and_drops_the_rest(tmp_path):
    store = Store(tmp_path)
    keep = make_chain(store, "keep", 1000)
    orphan = store.ingest_stream([b"orphan" * 100], algorithm="blake3")
    cache_ops.gc(store)
    assert not store.path(orphan).exists()
    for s in keep.steps:
        record = store.get_record(s["key"])
        assert record is not None and store.record_valid(record)


def test_gc_after_image_rm_reclaims_its_artifacts(tmp_path):
    store = Store(tmp_path)
    gone = make_chain(store, "gone", 1000)
    make_chain(store, "stays", 1000)
    images.remove(store, "gone")
    cache_ops.gc(store)
    assert not store.path(gone.artifacts["rootfs"]).exists()
    assert all(store.get_record(s["key"]) is None for s in gone.steps)
    assert len(images.all_images(store)) == 1


def test_gc_max_size_evicts_least_recently_used_first(tmp_path):
    store = Store(tmp_path)
    make_chain(store, "root", 8192)
    old, mid, new = (store.ingest_stream([os.urandom(8192)], algorithm="blake3") for _ in range(3))
    age(store, old, 3), age(store, mid, 2), age(store, new, 1)
    rooted = sum(e.size for e in cache_ops.entries(store) if e.referenced)
    result = cache_ops.gc(store, max_size=rooted + 8192 + 100)
    assert not store.path(old).exists() and not store.path(mid).exists()
    assert store.path(new).exists()
    assert result["evicted"] == 2 and not result["over_limit"]


def test_gc_max_size_never_evicts_named_images(tmp_path):
    store = Store(tmp_path)
    image = make_chain(store, "big", 16384)
    result = cache_ops.gc(store, max_size=1)
    assert store.path(image.artifacts["rootfs"]).exists()
    assert result["over_limit"]


def test_gc_max_age(tmp_path):
    store = Store(tmp_path)
    stale, fresh = (store.ingest_stream([os.urandom(100)], algorithm="blake3") for _ in range(2))
    age(store, stale, 10)
    cache_ops.gc(store, max_age_days=5)
    assert not store.path(stale).exists() and store.path(fresh).exists()


def test_export_import_round_trip_reverifies(tmp_path):
    src = Store(tmp_path / "src")
    image = make_chain(src, "moved", 5000)
    archive = tmp_path / "moved.tar.zst"
    export_image(src, "moved", archive)
    dst = Store(tmp_path / "dst")
    result = import_file(dst, archive)
    assert result["images"] == ["moved"]
    assert images.load(dst, "moved").artifacts == image.artifacts
    for s in image.steps:
        assert dst.record_valid(dst.get_record(s["key"]))
    assert dst.path(image.artifacts["rootfs"]).read_bytes() == src.path(image.artifacts["rootfs"]).read_bytes()


def test_import_of_a_tampered_archive_caches_nothing(tmp_path):
    import io
    import tarfile

    import zstandard

    src = Store(tmp_path / "src")
    make_chain(src, "moved", 5000)
    archive = tmp_path / "moved.tar.zst"
    export_image(src, "moved", archive)
    raw = zstandard.ZstdDecompressor().stream_reader(open(archive, "rb"), read_across_frames=True).read()
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tin, tarfile.open(fileobj=out, mode="w") as tout:
        for m in tin:
            data = tin.extractfile(m).read() if m.isfile() else None
            if data is not None and m.name.startswith("blobs/"):
                data = bytes([data[0] ^ 1]) + data[1:]  # (b"X" + ... left random data starting with X intact)
            tout.addfile(m, io.BytesIO(data) if data is not None else None)
    archive.write_bytes(zstandard.ZstdCompressor().compress(out.getvalue()))
    dst = Store(tmp_path / "dst")
    with pytest.raises(cache_ops.CacheError, match="digest mismatch"):
        import_file(dst, archive)
    assert list(dst.artifacts()) == [] and list(dst.records()) == [] and images.all_images(dst) == []


def test_gc_keeps_a_pinned_digest_no_image_references(tmp_path):
    """A VM's disk is an overlay over a cached rootfs: its pin keeps it after `image rm`."""
    from banger.core import pins

    store = Store(tmp_path / "cache")
    image = make_chain(store, "base", 1000)
    rootfs = image.artifacts["rootfs"]
    owner = tmp_path / "vms" / "dev" / "vm.json"
    owner.parent.mkdir(parents=True)
    owner.write_text("{}")
    pins.pin(store.root, "vm-dev", [rootfs], owner)
    images.remove(store, "base")
    result = cache_ops.gc(store)
    assert store.path(rootfs).exists()
    assert result["kept_for_images"] == 1
    assert {e.digest for e in cache_ops.entries(store) if e.referenced} == {rootfs}
    assert (store.root / "pins" / "vm-dev.json").exists()


def test_gc_drops_a_pin_whose_record_is_gone_and_collects_its_digest(tmp_path):
    from banger.core import pins

    store = Store(tmp_path / "cache")
    orphan = store.ingest_stream([os.urandom(4096)], algorithm="blake3")
    owner = tmp_path / "vms" / "dev" / "vm.json"
    owner.parent.mkdir(parents=True)
    owner.write_text("{}")
    pins.pin(store.root, "vm-dev", [orphan], owner)
    cache_ops.gc(store)
    assert store.path(orphan).exists()
    owner.unlink()  # the VM directory removed by hand
    cache_ops.gc(store)
    assert not store.path(orphan).exists()
    assert not (store.root / "pins" / "vm-dev.json").exists()


@pytest.mark.parametrize("damage", [b"{not json", b'{"digests": "blake3:aa", "record": 1}', b"\xff\xfe"])
def test_gc_evicts_nothing_while_a_pin_is_unreadable(tmp_path, damage):
    """A damaged pin could pin anything (a running VM's backing rootfs): gc keeps everything."""
    from banger.core import pins

    store = Store(tmp_path / "cache")
    image = make_chain(store, "base", 1000)
    rootfs = image.artifacts["rootfs"]
    owner = tmp_path / "vms" / "dev" / "vm.json"
    owner.parent.mkdir(parents=True)
    owner.write_text("{}")
    pins.pin(store.root, "vm-dev", [rootfs], owner)
    images.remove(store, "base")
    (store.root / "pins" / "vm-dev.json").write_bytes(damage)
    with pytest.raises(cache_ops.CacheError, match=r"nothing was evicted: pin .*vm-dev.json is damaged") as caught:
        cache_ops.gc(store)
    assert "\n" not in str(caught.value)
    assert store.path(rootfs).exists()
    pins.pin(store.root, "vm-dev", [rootfs], owner)  # what the VM's next start does
    cache_ops.gc(store)
    assert store.path(rootfs).exists()


def test_gc_keeps_a_named_images_snapshots_and_drops_them_with_the_image(tmp_path):
    """`vm create` restores from the snapshot step's outputs, which no image record lists: they
    are kept while the image whose rootfs they were made from is named."""
    store = Store(tmp_path / "cache")
    image = make_chain(store, "base", 1000)
    memory = store.ingest_stream([os.urandom(2000)], algorithm="blake3")
    disk = store.ingest_stream([os.urandom(3000)], algorithm="blake3")
    inputs = {"rootfs": image.artifacts["rootfs"]}
    key = action_key("snapshot", "1", inputs, {"vcpus": 2}, {})
    store.put_record(ActionRecord(key, "snapshot", "1", inputs, {"vcpus": 2}, {}, {"memory": memory, "disk": disk}))
    stale_inputs = {"rootfs": store.ingest_stream([b"an older rootfs"], algorithm="blake3")}
    stale_memory = store.ingest_stream([os.urandom(2000)], algorithm="blake3")
    stale_key = action_key("snapshot", "1", stale_inputs, {}, {})
    store.put_record(ActionRecord(stale_key, "snapshot", "1", stale_inputs, {}, {}, {"memory": stale_memory}))
    cache_ops.gc(store)
    assert store.path(memory).exists() and store.path(disk).exists() and store.get_record(key) is not None
    assert not store.path(stale_memory).exists() and store.get_record(stale_key) is None
    images.remove(store, "base")
    cache_ops.gc(store)
    assert not store.path(memory).exists() and store.get_record(key) is None
