"""`banger cache export FILE --image N` / `banger cache import FILE`: one image's artifacts and
records as a .tar.zst, and back.

An import trusts nothing in the archive. Everything is extracted into a private staging
directory first (archive_io: no path leaves it, sizes are capped) and hashed there; records are
checked (record_rules: key recomputed, recomputable outputs recomputed, every output present and
intact, one derivation per disk image); only then does anything enter the store. A local record
or image of the same key or name is never replaced: the local one is kept and the result says so.
"""
from __future__ import annotations

import json
import os
import tarfile
import time
from dataclasses import asdict
from pathlib import Path

from banger.app import record_rules
from banger.app.archive_io import (ArchiveError, CappedReader, HashingReader, SizeBudget, TreeWriter,
                                   add_file, new_file, write_sparse)
from banger.app.cache import CacheError, image_closure
from banger.core import digest as dg
from banger.core import images, inflight
from banger.core.records import remakeable
from banger.core.store import TREE, ActionRecord, Store, StoreError, tree_digest

DEFAULT_MAX_BYTES = 64 << 30  # decompressed archive stream; BANGER_IMPORT_MAX_BYTES overrides
MAX_DOC_BYTES = 16 << 20  # one record or image document
ALGORITHMS = ("sha256", "blake3")


def export_image(store: Store, name: str, out: Path) -> dict:
    """Write one image's records and artifacts to a .tar.zst; disk images keep their holes."""
    import zstandard

    image = images.load(store, name)
    keys, digests = image_closure(store, image)
    for d in digests:
        if not store.verify(d):
            raise CacheError(f"artifact {d} of image {name} is corrupt; rebuild it before exporting")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as raw, zstandard.ZstdCompressor(level=3, threads=-1).stream_writer(raw) as zw, \
                tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for d in sorted(digests):
                arc = ("trees/" if d.startswith(TREE) else "blobs/") + d.removeprefix(TREE).replace(":", "/")
                if d.startswith(TREE):
                    tar.add(store.path(d), arcname=arc, recursive=True)
                else:
                    add_file(tar, store.path(d), arc)
            for key in sorted(keys):
                record = store.get_record(key)
                if record is not None:
                    _add_bytes(tar, f"actions/{key}.json", json.dumps(record.to_json()).encode())
            _add_bytes(tar, f"images/{name}.json", images._path(store, name).read_bytes())
        os.replace(tmp, out)
    except ArchiveError as exc:
        raise CacheError(f"export of {name} failed: {exc}") from None
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()
    return {"image": name, "artifacts": len(digests), "records": len(keys), "file": str(out),
            "bytes": out.stat().st_size}


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def max_import_bytes() -> int:
    """The cap on an archive's decompressed size: BANGER_IMPORT_MAX_BYTES (e.g. 100G), else 64 GiB."""
    text = os.environ.get("BANGER_IMPORT_MAX_BYTES")
    if not text:
        return DEFAULT_MAX_BYTES
    from banger.engine.spec import SpecError, parse_size

    try:
        return parse_size(text)
    except SpecError:
        raise CacheError(f"BANGER_IMPORT_MAX_BYTES={text!r} is not a size; use e.g. 100G") from None


class _Staged:
    """What the archive holds, extracted and hashed in staging, nothing in the store yet."""

    def __init__(self, stage: Path):
        self.stage = stage
        self.blobs: dict[str, Path] = {}  # digest -> staged file (its digest checked)
        self.trees: dict[str, TreeWriter] = {}
        self.records: dict[str, ActionRecord] = {}
        self.images: list[images.ImageRecord] = []


def import_file(store: Store, src: Path, max_bytes: int | None = None) -> dict:
    """Read an export; raises CacheError (one line) and leaves the store as it was if anything in
    the archive is refused. Returns what was imported and what was kept local instead. Holds the
    builds' lock like a build (core/inflight.py): `banger cache gc` does not evict what it brings
    in before its image records are written."""
    with inflight.building(store.root):
        return _import_file(store, src, max_bytes)


def _import_file(store: Store, src: Path, max_bytes: int | None) -> dict:
    import zstandard

    cap = max_import_bytes() if max_bytes is None else max_bytes
    with store.staging("import-") as stage:
        staged = _Staged(stage)
        try:
            with open(src, "rb") as raw:
                hashed = HashingReader(raw)
                with zstandard.ZstdDecompressor().stream_reader(hashed, read_across_frames=True) as zr:
                    capped = CappedReader(zr, cap)
                    with tarfile.open(fileobj=capped, mode="r|") as tar:
                        budget = SizeBudget(cap)
                        for member in tar:
                            budget.take(member)
                            _extract(tar, member, staged)
                        while hashed.read(1 << 20):  # the rest of the file, for its digest
                            pass
            for tree in staged.trees.values():
                tree.close()
            _check_trees(staged)
            _check_images(staged)
        except (ArchiveError, tarfile.TarError, zstandard.ZstdError, dg.DigestError) as exc:
            raise CacheError(f"{src}: {exc}") from None
        finally:
            for tree in staged.trees.values():
                tree.close()
        return _commit(store, staged, src, hashed.digest())


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, staged: _Staged) -> None:
    parts = member.name.split("/")
    if member.name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ArchiveError(f"unsafe member {member.name!r}; not a banger export")
    kind = parts[0]
    if kind == "blobs" and len(parts) == 3 and member.isfile():
        digest = _digest(parts[1], parts[2], member.name)
        if digest in staged.blobs:
            raise ArchiveError(f"{member.name!r} appears twice; refusing the archive")
        path = staged.stage / f"blob-{parts[1]}-{parts[2]}"
        stage_fd = _dir_fd(staged.stage)
        try:
            fd = new_file(stage_fd, path.name)
        finally:
            os.close(stage_fd)
        try:
            got = write_sparse(tar.extractfile(member), fd, parts[1])
        finally:
            os.close(fd)
        if got != digest:
            raise ArchiveError(f"digest mismatch: {member.name} holds {got}; nothing was cached")
        staged.blobs[digest] = path
    elif kind == "trees" and len(parts) >= 3:
        digest = TREE + _digest(parts[1], parts[2], member.name)
        writer = staged.trees.get(digest)
        if writer is None:
            if len(parts) > 3:
                raise ArchiveError(f"member {member.name!r} comes before its tree; not a banger export")
            writer = staged.trees[digest] = TreeWriter(staged.stage / f"tree-{parts[1]}-{parts[2]}",
                                                       "/".join(parts[:3]) + "/")
        writer.add(tar, member, parts[3:])
    elif kind in ("actions", "images") and len(parts) == 2 and parts[1].endswith(".json") and member.isfile():
        if member.size > MAX_DOC_BYTES:
            raise ArchiveError(f"{member.name!r} is {member.size} bytes; not a banger export")
        try:
            data = json.loads(tar.extractfile(member).read())
        except (ValueError, RecursionError):
            raise ArchiveError(f"{member.name!r} is not JSON; not a banger export") from None
        stem = parts[1].removesuffix(".json")
        if kind == "actions":
            try:
                record = record_rules.parse(data)
            except ValueError as exc:
                raise ArchiveError(f"{member.name!r}: {exc}") from None
            if record.key != stem:
                raise ArchiveError(f"{member.name!r} holds the record of another key; refusing the archive")
            staged.records[record.key] = record
        else:
            try:
                image = images.ImageRecord(**data)
            except TypeError:
                raise ArchiveError(f"{member.name!r} is not an image record") from None
            if image.name != stem or not images.NAME_RE.fullmatch(stem):
                raise ArchiveError(f"{member.name!r} names image {image.name!r}; refusing the archive")
            staged.images.append(image)
    else:
        raise ArchiveError(f"unexpected member {member.name!r}; not a banger export")


def _dir_fd(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _digest(alg: str, hexpart: str, name: str) -> str:
    if alg not in ALGORITHMS:
        raise ArchiveError(f"unexpected member {name!r}; not a banger export")
    digest = f"{alg}:{hexpart}"
    dg.split(digest)
    return digest


def _check_trees(staged: _Staged) -> None:
    for digest, writer in staged.trees.items():
        got = tree_digest(staged.stage / f"tree-{digest.removeprefix(TREE).replace(':', '-')}")
        if got != digest:
            raise ArchiveError(f"tree {digest} arrived as {got}; nothing was imported")


def _check_images(staged: _Staged) -> None:
    for image in staged.images:
        steps_ok = isinstance(image.steps, list) and all(
            isinstance(s, dict) and isinstance(s.get("key"), str) for s in image.steps)
        artifacts_ok = isinstance(image.artifacts, dict) and all(
            isinstance(d, str) and dg.DIGEST_RE.fullmatch(d.removeprefix(TREE)) for d in image.artifacts.values())
        if not (steps_ok and artifacts_ok):
            raise ArchiveError(f"image {image.name!r} is not a valid image record; not a banger export")


def _commit(store: Store, staged: _Staged, src: Path, archive: str) -> dict:
    """Check the records and images against the staged artifacts and the store, then move in
    the artifacts, the records that hold and the images whose records hold."""
    for record in staged.records.values():
        why = record_rules.problem(record)
        if why is not None:
            raise CacheError(f"{src}: record {record.key[:12]} ({record.step}): {why}; nothing was imported")

    def present(digest: str) -> bool:
        return digest in staged.blobs or store.verify(digest)

    local = {r.key: r for r, _ in store.records()}
    kept_local, refused, taken = [], [], {}
    for key, record in sorted(staged.records.items()):
        mine = local.get(key)
        if mine is not None:
            if mine.outputs != record.outputs:
                kept_local.append(f"{key[:12]} ({record.step})")
            continue
        missing = [name for name, d in record.outputs.items() if name not in remakeable(record) and not present(d)]
        if missing:
            refused.append(f"{key[:12]} ({record.step}): its {', '.join(missing)} is not in the archive")
            continue
        taken[key] = record
    for digest, claimants in record_rules.conflicts([*local.values(), *taken.values()]).items():
        for record in claimants:
            if record.key in taken:
                del taken[record.key]
                refused.append(f"{record.key[:12]} ({record.step}): it claims {digest[:19]}…, which other "
                               "inputs made; a disk image has one derivation")
    now = time.time()
    imported = 0
    for digest, path in staged.blobs.items():
        if not (store.path(digest).exists() and store.verify(digest)):
            try:
                store.ingest_file(path, expected=digest, hashed=digest)
            except StoreError as exc:
                raise CacheError(f"{src}: {exc}") from None
            imported += 1
    for digest in staged.trees:
        root = staged.stage / f"tree-{digest.removeprefix(TREE).replace(':', '-')}"
        if store.ingest_tree(root) != digest:  # checked in staging; a change since is an error
            raise CacheError(f"{src}: tree {digest} changed while it was imported")
        imported += 1
    for record in taken.values():
        record.info = {**record.info, "imported": {"archive": archive, "at": now}}
        store.put_record(record)
    holding = {**local, **taken}
    names, images_kept = [], []
    for image in staged.images:
        made = {d for s in image.steps if (r := holding.get(s["key"])) for d in r.outputs.values()}
        if not set(image.artifacts.values()) <= made:
            refused.append(f"image {image.name}: its artifacts are not what its records made")
            continue
        try:
            mine_image = images.load(store, image.name)
        except images.ImageError:
            mine_image = None
        if mine_image is not None:
            if asdict(mine_image) != asdict(image):
                images_kept.append(image.name)
                continue
        else:
            images.save(store, image)
        names.append(image.name)
    return {"artifacts": imported, "records": len(taken), "images": names, "kept_local": kept_local,
            "images_kept_local": images_kept, "refused": refused, "archive": archive}
