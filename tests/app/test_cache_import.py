"""`cache import` of hostile archives: nothing is written outside the cache's staging, sizes are
capped, sparse images stay sparse, and imported records cannot redirect a build.

Every archive here is crafted with tarfile, as an attacker would."""
from __future__ import annotations

import io
import os
import resource
import tarfile
import time
from pathlib import Path

import pytest
import zstandard

from banger.app import cache as cache_ops
from banger.app.cache_archive import export_image, import_file
from banger.core import images
from banger.core.store import ActionRecord, Store, action_key

TREE_DIR = "trees/blake3/" + "0" * 64


def write_archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    return info


def assert_nothing_imported(store: Store) -> None:
    assert list(store.artifacts()) == [] and list(store.records()) == [] and images.all_images(store) == []
    assert list((store.root / "staging").iterdir()) == []


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file outside the cache that an archive must never reach."""
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    (outside / "victim").write_text("precious")
    return outside / "victim"


# ---- item 1: extraction ------------------------------------------------------------------------
def test_a_file_member_after_a_symlink_of_the_same_name_is_refused(tmp_path, victim):
    store = Store(tmp_path / "cache")
    archive = write_archive(tmp_path / "evil.tar.zst", [
        (member(TREE_DIR, tarfile.DIRTYPE, mode=0o755), None),
        (member(f"{TREE_DIR}/evil", tarfile.SYMTYPE, linkname=str(victim)), None),
        (member(f"{TREE_DIR}/evil"), b"pwned"),
    ])
    with pytest.raises(cache_ops.CacheError) as refused:
        import_file(store, archive)
    assert victim.read_text() == "precious"
    assert "appears twice" in str(refused.value)
    assert_nothing_imported(store)


def test_a_directory_member_after_a_symlink_of_the_same_name_chmods_nothing_outside(tmp_path, victim):
    store = Store(tmp_path / "cache")
    archive = write_archive(tmp_path / "evil.tar.zst", [
        (member(TREE_DIR, tarfile.DIRTYPE, mode=0o755), None),
        (member(f"{TREE_DIR}/d", tarfile.SYMTYPE, linkname=str(victim.parent)), None),
        (member(f"{TREE_DIR}/d", tarfile.DIRTYPE, mode=0o777), None),
    ])
    with pytest.raises(cache_ops.CacheError) as refused:
        import_file(store, archive)
    assert victim.parent.stat().st_mode & 0o777 == 0o700
    assert "names an existing non-directory" in str(refused.value)
    assert_nothing_imported(store)


@pytest.mark.parametrize("linkname", [
    f"{TREE_DIR}/../../../../outside/victim",  # up out of the staging dir, to tmp_path/outside
    "trees/blake3/" + "1" * 64 + "/victim",  # another tree of the archive
    f"{TREE_DIR}/s/victim",  # through a symlink the archive planted
])
def test_a_hardlink_leaving_its_tree_is_refused(tmp_path, victim, linkname):
    store = Store(tmp_path / "cache")
    archive = write_archive(tmp_path / "evil.tar.zst", [
        (member(TREE_DIR, tarfile.DIRTYPE, mode=0o755), None),
        (member(f"{TREE_DIR}/s", tarfile.SYMTYPE, linkname=str(victim.parent)), None),
        (member(f"{TREE_DIR}/h", tarfile.LNKTYPE, linkname=linkname), None),
        (member(f"{TREE_DIR}/h"), b"pwned"),
    ])
    with pytest.raises((cache_ops.CacheError, OSError)) as refused:
        import_file(store, archive)
    assert victim.read_text() == "precious"
    assert refused.type is cache_ops.CacheError
    assert "hardlink" in str(refused.value) or "not a directory of its tree" in str(refused.value)
    assert_nothing_imported(store)


@pytest.mark.parametrize("fill", [b"\0", b"A"], ids=["zeros", "data"])
def test_an_archive_that_expands_past_the_cap_is_refused_without_writing_past_it(tmp_path, fill):
    """A 32 MiB member that compresses to a few KB, against a 1 MiB cap: refused, and no file
    of the import ever grew past 4 MiB (RLIMIT_FSIZE turns such a write into an error)."""
    store = Store(tmp_path / "cache")
    archive = write_archive(tmp_path / "bomb.tar.zst", [(member("blobs/blake3/" + "2" * 64), fill * (32 << 20))])
    assert archive.stat().st_size < 64 * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, hard))
    try:
        with pytest.raises(cache_ops.CacheError, match="expands to more than 1.0 MiB"):
            import_file(store, archive, max_bytes=1 << 20)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert_nothing_imported(store)


def test_the_cap_comes_from_the_environment(tmp_path, monkeypatch):
    store = Store(tmp_path / "cache")
    archive = write_archive(tmp_path / "bomb.tar.zst", [(member("blobs/blake3/" + "2" * 64), b"\0" * (4 << 20))])
    monkeypatch.setenv("BANGER_IMPORT_MAX_BYTES", "1M")
    with pytest.raises(cache_ops.CacheError, match="BANGER_IMPORT_MAX_BYTES"):
        import_file(store, archive)
    assert_nothing_imported(store)


def sparse_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in (0, size // 2, size - 4096):
            f.seek(offset)
            f.write(os.urandom(4096))
    return path


def image_of(store: Store, name: str, rootfs: str, source: str) -> images.ImageRecord:
    key = action_key("disk", "1", {"source": source}, {}, {})
    store.put_record(ActionRecord(key, "disk", "1", {"source": source}, {}, {}, {"image": rootfs}))
    image = images.ImageRecord(name=name, ref=f"example/{name}", digest="sha256:" + "0" * 64, built_at=time.time(),
                               artifacts={"rootfs": rootfs}, steps=[{"step": "disk", "status": "ran",
                                                                     "seconds": 0.1, "key": key}])
    images.save(store, image)
    return image


def test_a_sparse_image_stays_sparse_through_export_and_import(tmp_path):
    src = Store(tmp_path / "src")
    size = 256 << 20
    rootfs = src.ingest_file(sparse_file(src.root / "staging" / "disk", size))
    source = src.ingest_stream([b"layer"], algorithm="blake3")
    image_of(src, "sparse", rootfs, source)
    archive = tmp_path / "sparse.tar.zst"
    export_image(src, "sparse", archive)
    raw = zstandard.ZstdDecompressor().stream_reader(open(archive, "rb"), read_across_frames=True).read()
    assert len(raw) < 1 << 20  # the holes did not travel, not even as compressed zeros
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:  # any tar reader restores the whole file
        disk = next(m for m in tar.getmembers() if m.name == "blobs/" + rootfs.replace(":", "/"))
        assert disk.size == size and tar.extractfile(disk).read() == src.path(rootfs).read_bytes()

    dst = Store(tmp_path / "dst")
    result = import_file(dst, archive)
    assert result["images"] == ["sparse"]
    st = dst.path(rootfs).stat()
    assert st.st_size == size
    assert st.st_blocks * 512 <= src.path(rootfs).stat().st_blocks * 512 + (1 << 20)
    assert dst.verify(rootfs, full=True)


def test_an_old_style_archive_with_the_zeros_written_out_imports_sparse(tmp_path):
    """Exports made before sparse members carry every zero: the import still makes holes."""
    data = bytearray(8 << 20)
    data[:4096] = os.urandom(4096)
    from banger.core import digest as dg

    digest = dg.of_bytes(bytes(data), "blake3")
    archive = write_archive(tmp_path / "old.tar.zst", [(member("blobs/" + digest.replace(":", "/")), bytes(data))])
    store = Store(tmp_path / "cache")
    import_file(store, archive)
    assert store.path(digest).stat().st_blocks * 512 <= 1 << 20
    assert store.verify(digest, full=True)


def test_a_tree_with_links_and_holes_round_trips(tmp_path):
    src = Store(tmp_path / "src")
    tree = src.root / "staging" / "tree"
    (tree / "etc" / "sub").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("box\n")
    os.link(tree / "etc" / "hostname", tree / "etc" / "sub" / "hostname")
    (tree / "etc" / "link").symlink_to("/etc/hostname")
    sparse_file(tree / "disk", 8 << 20)
    os.chmod(tree / "etc" / "sub", 0o750)
    digest = src.ingest_tree(tree)
    image_of(src, "tree", src.ingest_stream([b"rootfs"], algorithm="blake3"), digest)
    archive = tmp_path / "tree.tar.zst"
    export_image(src, "tree", archive)
    dst = Store(tmp_path / "dst")
    import_file(dst, archive)
    moved = dst.path(digest)
    assert dst.verify(digest, full=True)
    assert os.readlink(moved / "etc" / "link") == "/etc/hostname"
    assert (moved / "etc" / "sub" / "hostname").stat().st_ino == (moved / "etc" / "hostname").stat().st_ino
    assert (moved / "disk").stat().st_blocks * 512 <= 1 << 20


# ---- item 2: records -----------------------------------------------------------------------------
def chain(store: Store, name: str) -> tuple[images.ImageRecord, dict[str, ActionRecord]]:
    """An image of two steps: mkfs (seed -> image) and stage (image -> rootfs)."""
    seed = store.ingest_stream([f"seed of {name}".encode()], algorithm="blake3")
    records, prev, steps = {}, seed, []
    for step, inp, out in (("mkfs", "tree", "image"), ("stage", "image", "rootfs")):
        made = store.ingest_stream([os.urandom(2048)], algorithm="blake3")
        key = action_key(step, "1", {inp: prev}, {}, {})
        records[step] = ActionRecord(key, step, "1", {inp: prev}, {}, {}, {out: made})
        store.put_record(records[step])
        steps.append({"step": step, "status": "ran", "seconds": 0.1, "key": key})
        prev = made
    image = images.ImageRecord(name=name, ref=f"example/{name}", digest="sha256:" + "0" * 64,
                               built_at=time.time(), artifacts={"rootfs": prev}, steps=steps)
    images.save(store, image)
    return image, records


def forged(record: ActionRecord, rootfs: str) -> ActionRecord:
    """The record with its key still valid (same step, inputs, params, tools), its output elsewhere."""
    return ActionRecord(**{**record.to_json(), "outputs": {"rootfs": rootfs}})


def copy_blob(src: Store, dst: Store, digest: str) -> None:
    dst.ingest_stream([src.path(digest).read_bytes()], expected=digest)


def test_an_imported_record_never_replaces_the_local_one(tmp_path):
    dst = Store(tmp_path / "dst")
    _, mine = chain(dst, "victim")
    attacker = Store(tmp_path / "attacker")
    other, _ = chain(attacker, "other")
    attacker.put_record(forged(mine["stage"], other.artifacts["rootfs"]))
    other.steps.append({"step": "stage", "status": "ran", "seconds": 0.1, "key": mine["stage"].key})
    images.save(attacker, other)
    archive = tmp_path / "other.tar.zst"
    export_image(attacker, "other", archive)

    result = import_file(dst, archive)
    assert dst.get_record(mine["stage"].key).outputs == mine["stage"].outputs
    assert result["kept_local"] == [f"{mine['stage'].key[:12]} (stage)"]
    assert result["images"] == ["other"]


def test_an_imported_image_never_replaces_the_local_one_of_that_name(tmp_path):
    src, dst = Store(tmp_path / "src"), Store(tmp_path / "dst")
    chain(src, "moved")
    mine, _ = chain(dst, "moved")
    archive = tmp_path / "moved.tar.zst"
    export_image(src, "moved", archive)
    result = import_file(dst, archive)
    assert result["images_kept_local"] == ["moved"] and result["images"] == []
    assert images.load(dst, "moved").artifacts == mine.artifacts


def test_a_sparse_member_claiming_a_huge_size_is_refused(tmp_path):
    """A GNU sparse member of no data that says it is 1 TiB: holes count against the cap too."""
    head = b"1\n0\n0\n".ljust(512, b"\0")
    info = member("blobs/blake3/GNUSparseFile.0/" + "3" * 64)
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                        "GNU.sparse.name": "blobs/blake3/" + "3" * 64, "GNU.sparse.realsize": str(1 << 40)}
    archive = write_archive(tmp_path / "holes.tar.zst", [(info, head)])
    store = Store(tmp_path / "cache")
    with pytest.raises(cache_ops.CacheError, match="add up to more than 32.0 MiB"):
        import_file(store, archive, max_bytes=1 << 20)
    assert_nothing_imported(store)


def test_a_forged_record_pointing_legitimate_inputs_at_another_rootfs_is_refused(tmp_path):
    """The victim has built `other`; the archive says the victim image's inputs made other's rootfs."""
    dst = Store(tmp_path / "dst")
    other, _ = chain(dst, "other")
    attacker = Store(tmp_path / "attacker")
    victim, records = chain(attacker, "victim")
    copy_blob(dst, attacker, other.artifacts["rootfs"])
    attacker.put_record(forged(records["stage"], other.artifacts["rootfs"]))
    victim.artifacts["rootfs"] = other.artifacts["rootfs"]
    images.save(attacker, victim)
    archive = tmp_path / "victim.tar.zst"
    export_image(attacker, "victim", archive)

    result = import_file(dst, archive)
    assert dst.get_record(records["stage"].key) is None  # a build of victim will run its stage step
    assert dst.get_record(records["mkfs"].key).outputs == records["mkfs"].outputs
    assert any(r.startswith(records["stage"].key[:12]) and "one derivation" in r for r in result["refused"])
    assert "victim" not in result["images"] and "image victim: its artifacts are not what its records made" in result["refused"]


def test_a_record_whose_recomputable_output_is_wrong_refuses_the_archive(tmp_path):
    """A fetch outputs the blob its input names: a fetch record saying otherwise is forged."""
    attacker = Store(tmp_path / "attacker")
    other, _ = chain(attacker, "other")
    wanted = "sha256:" + "a" * 64
    key = action_key("fetch:aaaaaaaaaaaa", "1", {"blob": wanted}, {}, {})
    attacker.put_record(ActionRecord(key, "fetch:aaaaaaaaaaaa", "1", {"blob": wanted}, {}, {},
                                     {"blob": other.artifacts["rootfs"]}))
    other.steps.append({"step": "fetch:aaaaaaaaaaaa", "status": "ran", "seconds": 0.1, "key": key})
    images.save(attacker, other)
    archive = tmp_path / "other.tar.zst"
    export_image(attacker, "other", archive)
    dst = Store(tmp_path / "dst")
    with pytest.raises(cache_ops.CacheError, match="a fetch must output the very blob its input names"):
        import_file(dst, archive)
    assert_nothing_imported(dst)


def test_verify_removes_a_record_that_claims_another_derivations_rootfs(tmp_path):
    """A forged record already in the cache (an import by an older banger): `cache verify` finds it."""
    store = Store(tmp_path / "cache")
    other, other_records = chain(store, "other")
    _, records = chain(store, "victim")
    store.put_record(forged(records["stage"], other.artifacts["rootfs"]))
    assert store.record_valid(store.get_record(records["stage"].key))  # what a build would serve
    lines = cache_ops.verify_records(store)
    assert store.get_record(records["stage"].key) is None
    assert any(line.startswith(f"record {records['stage'].key[:12]} (stage) removed") for line in lines)
    assert store.get_record(records["mkfs"].key) is not None  # the rest stays


def test_verify_prefers_the_locally_made_record_over_an_imported_one(tmp_path):
    store = Store(tmp_path / "cache")
    other, other_records = chain(store, "other")
    _, records = chain(store, "victim")
    bad = forged(records["stage"], other.artifacts["rootfs"])
    bad.info = {"imported": {"archive": "sha256:" + "0" * 64, "at": 0}}
    store.put_record(bad)
    lines = cache_ops.verify_records(store)
    assert store.get_record(records["stage"].key) is None
    assert store.get_record(other_records["stage"].key) is not None
    assert len(lines) == 1 and "imported" in lines[0]


def test_verify_removes_a_record_whose_key_does_not_match_it(tmp_path):
    store = Store(tmp_path / "cache")
    _, records = chain(store, "victim")
    store.put_record(ActionRecord(**{**records["mkfs"].to_json(), "params": {"size": 1}}))
    lines = cache_ops.verify_records(store)
    assert store.get_record(records["mkfs"].key) is None
    # the store itself refuses a record whose content does not hash to its key (core/records.py):
    # it is removed as damaged and `cache verify` reports it from there
    assert lines == [] and "key" in store.damaged[records["mkfs"].key]
