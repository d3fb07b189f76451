"""`banger cache ls|du|verify|gc|export|import`: whole-store operations."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from banger.core import digest as dg
from banger.core import images, inflight, pins
from banger.core.fsutil import remove_tree
from banger.core.store import TREE, ActionRecord, Store, action_key


class CacheError(RuntimeError):
    pass


def _digests_in(value) -> Iterator[str]:
    if isinstance(value, str):
        bare = value.removeprefix(TREE)
        if dg.DIGEST_RE.fullmatch(bare):
            yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _digests_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from _digests_in(v)


def image_closure(store: Store, image: images.ImageRecord) -> tuple[set[str], set[str]]:
    """(record keys, artifact digests) an image needs for a fully cached rebuild."""
    keys = {s["key"] for s in image.steps}
    digests = set(_digests_in(image.artifacts)) | set(_digests_in(image.extra)) | {image.digest}
    for key in keys:
        record = store.get_record(key)
        if record is not None:
            digests |= set(_digests_in(record.inputs)) | set(_digests_in(record.outputs))
    return keys, {d for d in digests if store.path(d).exists()}


def roots(store: Store) -> tuple[set[str], set[str]]:
    keys: set[str] = set()
    digests: set[str] = set()
    for image in images.all_images(store):
        k, d = image_closure(store, image)
        keys |= k
        digests |= d
    for pinned in pins.pinned(store.root).values():  # e.g. the rootfs a VM's disk is backed by
        digests |= pinned
    return keys, digests


@dataclass
class Entry:
    digest: str
    size: int
    last_used: float
    referenced: bool


def entries(store: Store) -> list[Entry]:
    _, kept = roots(store)
    return [Entry(d, store.size_of(d), store.last_used(d), d in kept) for d in store.artifacts()]


def verify_all(store: Store) -> tuple[list[str], list[str]]:
    """Rehash every artifact; corrupt ones are removed (and their records with them)."""
    good, bad = [], []
    for d in list(store.artifacts()):
        (good if store.verify(d, full=True) else bad).append(d)
    if bad:
        _drop_records_producing(store, set(bad))
    for _ in store.records():  # reading every record removes the damaged ones
        pass
    bad += [f"action record {key} ({why})" for key, why in store.damaged.items()]
    return good, bad


def _drop_records_producing(store: Store, gone: set[str]) -> None:
    for record, _ in list(store.records()):
        if gone & set(record.outputs.values()):
            store.remove_record(record.key)


GC_WAIT = 600.0  # seconds gc waits for running builds by default


def gc(store: Store, max_size: int | None = None, max_age_days: float | None = None,
       wait: float = GC_WAIT, on_wait: Callable[[int], None] | None = None) -> dict:
    """Evict what no named image references: older than max_age, then LRU until under max_size.

    With neither limit, everything unreferenced goes. Runs while no build does (it waits up to
    `wait` seconds for running builds, telling on_wait how many): a build's artifacts are
    referenced by no image until it has named its image.
    """
    try:
        with inflight.collecting(store.root, wait, on_wait):
            return _gc(store, max_size, max_age_days)
    except inflight.Busy as exc:
        n = f"{exc.builds} build{'s' if exc.builds != 1 else ''}" if exc.builds else "builds"
        raise CacheError(f"{n} still running{f' after {wait:g} s' if wait > 0 else ''}; nothing was evicted: "
                         "run `banger cache gc` again when they finish (or give --wait SECONDS)") from None


def _gc(store: Store, max_size: int | None, max_age_days: float | None) -> dict:
    _, damaged = images.scan(store)
    if damaged:  # it could reference anything (a flipped byte in a digest): only keeping all is safe
        more = f" ({len(damaged) - 1} more: `banger image list` names them)" if len(damaged) > 1 else ""
        raise CacheError(f"nothing was evicted: {damaged[0]}{more}")
    root_keys, root_digests = roots(store)
    listing = entries(store)
    candidates = sorted((e for e in listing if not e.referenced), key=lambda e: e.last_used)
    total = sum(e.size for e in listing)
    now = time.time()
    evicted: list[Entry] = []
    for e in candidates:
        too_old = max_age_days is not None and now - e.last_used > max_age_days * 86400
        too_big = max_size is not None and total > max_size
        unlimited = max_size is None and max_age_days is None
        if too_old or too_big or unlimited:
            store.remove(e.digest)
            total -= e.size
            evicted.append(e)
    gone = {e.digest for e in evicted}
    _drop_records_producing(store, gone)
    for record, _ in list(store.records()):  # records nothing needs any more
        if record.key not in root_keys and not any(store.path(d).exists() for d in record.outputs.values()):
            store.remove_record(record.key)
    _sweep_staging(store)
    return {"evicted": len(evicted), "freed": sum(e.size for e in evicted), "size": total,
            "kept_for_images": len(root_digests),
            "over_limit": bool(max_size is not None and total > max_size),
            "damaged_records": sorted(store.damaged)}  # removed as they were read


def _sweep_staging(store: Store, older_than: float = 24 * 3600) -> None:
    """Staging dirs of crashed builds (kept a day: a resumable download may still want them)."""
    now = time.time()
    for p in (store.root / "staging").iterdir():
        with contextlib.suppress(FileNotFoundError):
            if now - p.lstat().st_mtime > older_than:
                remove_tree(p) if p.is_dir() else p.unlink()


# ---- export / import -------------------------------------------------------------------------
def export_image(store: Store, name: str, out: Path) -> dict:
    """Write one image's records and artifacts to a .tar.zst (zstd also squeezes sparse zeros)."""
    import zstandard

    image = images.load(store, name)
    keys, digests = image_closure(store, image)
    for d in digests:
        if not store.verify(d):
            raise CacheError(f"artifact {d} of image {name} is corrupt; rebuild it before exporting")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as raw, zstandard.ZstdCompressor(level=3, threads=-1).stream_writer(raw) as zw, \
            tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted(digests):
            arc = "trees/" if d.startswith(TREE) else "blobs/"
            tar.add(store.path(d), arcname=arc + d.removeprefix(TREE).replace(":", "/"), recursive=True)
        for key in sorted(keys):
            record = store.get_record(key)
            if record is not None:
                _add_bytes(tar, f"actions/{key}.json", json.dumps(record.to_json()).encode())
        _add_bytes(tar, f"images/{name}.json", images._path(store, name).read_bytes())
    os.replace(tmp, out)
    return {"image": name, "artifacts": len(digests), "records": len(keys), "file": str(out),
            "bytes": out.stat().st_size}


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def import_file(store: Store, src: Path) -> dict:
    """Read an export: every artifact is re-verified and every record key recomputed before use."""
    import zstandard

    imported, image_docs = 0, []
    records: list[ActionRecord] = []
    with store.staging("import-") as stage, open(src, "rb") as raw, \
            zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True) as zr, \
            tarfile.open(fileobj=zr, mode="r|") as tar:
        trees: dict[str, Path] = {}
        for member in tar:
            parts = member.name.split("/")
            if ".." in parts or member.name.startswith("/"):
                raise CacheError(f"{src}: unsafe member {member.name!r}; not a banger export")
            if parts[0] == "blobs" and len(parts) == 3 and member.isfile():
                expected = f"{parts[1]}:{parts[2]}"
                dg.split(expected)
                tmp = stage / f"blob-{parts[2]}"
                with open(tmp, "wb") as f:
                    shutil.copyfileobj(tar.extractfile(member), f, 1 << 20)
                try:
                    store.ingest_file(tmp, expected=expected)
                except Exception as exc:
                    raise CacheError(f"{src}: {exc}") from None
                imported += 1
            elif parts[0] == "trees" and len(parts) >= 3:
                digest = f"{TREE}{parts[1]}:{parts[2]}"
                root = trees.setdefault(digest, stage / f"tree-{parts[2]}")
                rel = "/".join(parts[3:])
                _extract_tree_member(tar, member, root, rel)
            elif parts[0] == "actions" and member.isfile():
                data = json.loads(tar.extractfile(member).read())
                records.append(ActionRecord(**data))
            elif parts[0] == "images" and member.isfile():
                image_docs.append(json.loads(tar.extractfile(member).read()))
            else:
                raise CacheError(f"{src}: unexpected member {member.name!r}; not a banger export")
        for digest, root in trees.items():
            got = store.ingest_tree(root)
            if got != digest:
                store.remove(got)
                raise CacheError(f"{src}: tree {digest} arrived as {got}; nothing was imported")
            imported += 1
    for record in records:
        if action_key(record.step, record.step_version, record.inputs, record.params, record.tools) != record.key:
            raise CacheError(f"{src}: record {record.key[:12]} does not match its inputs; refusing it")
        if store.record_valid(record):
            store.put_record(record)
    for doc in image_docs:
        images.save(store, images.ImageRecord(**doc))
    return {"artifacts": imported, "records": len(records), "images": [d["name"] for d in image_docs]}


def _extract_tree_member(tar: tarfile.TarFile, member: tarfile.TarInfo, root: Path, rel: str) -> None:
    dest = root / rel if rel else root
    for parent in list(dest.relative_to(root).parents)[:-1]:
        if (root / parent).is_symlink():  # never write through a symlink the archive planted
            raise CacheError(f"unsafe tree member {member.name!r} (goes through a symlink)")
    if member.isdir():
        dest.mkdir(parents=True, exist_ok=True)
        os.chmod(dest, member.mode & 0o7777 | 0o700)
    elif member.issym():
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(member.linkname, dest)
    elif member.islnk():
        link_rel = member.linkname.split("/", 3)[3]
        os.link(root / link_rel, dest)
    elif member.isfile():
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as f:
            shutil.copyfileobj(tar.extractfile(member), f, 1 << 20)
        os.chmod(dest, member.mode & 0o7777 | 0o600)
