"""`banger cache ls|du|verify|gc`: whole-store operations (export and import: cache_archive.py)."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from banger.core import digest as dg
from banger.core import images, inflight, pins, procs
from banger.core.fsutil import remove_tree
from banger.core.records import strings_in
from banger.steps.snapshot import NAME as SNAPSHOT_STEP
from banger.core.store import TREE, Store


class CacheError(RuntimeError):
    pass


def _digests_in(value) -> Iterator[str]:
    for s in strings_in(value):
        if dg.DIGEST_RE.fullmatch(s.removeprefix(TREE)):
            yield s


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
    rootfs: set[str] = set()
    for image in images.all_images(store):
        k, d = image_closure(store, image)
        keys |= k
        digests |= d
        rootfs.add(image.artifacts.get("rootfs", ""))
    for record, _ in store.records():  # a named image's snapshots (`vm create` restores from them)
        if record.step == SNAPSHOT_STEP and record.inputs.get("rootfs") in rootfs:
            keys.add(record.key)
            digests |= {d for d in _digests_in(record.outputs) if store.path(d).exists()}
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


KINDS = {"fetch": "layers", "flatten": "trees", "ext4": "images", "ownership": "images", "inject": "images",
         "stage-kernel": "kernels", SNAPSHOT_STEP: "snapshots"}  # the step that made it -> its kind
KIND_ORDER = ("layers", "trees", "images", "kernels", "snapshots", "other")


def kind_of(store: Store) -> dict[str, str]:
    """digest -> kind (layers, trees, images, kernels, snapshots) by the step whose record names
    it as an output; what no record names (manifests, boot results...) is not in the map."""
    kinds: dict[str, str] = {}
    for record, _ in store.records():
        kind = KINDS.get(record.step.split(":", 1)[0], "other")
        for d in _digests_in(record.outputs):
            kinds.setdefault(d, kind)
    return kinds


def usage(store: Store) -> dict:
    """What `cache du` says: the cache's size, what named images keep, its bytes by kind (layers,
    trees, images, kernels, snapshots, other), and the RAM it holds."""
    rows = entries(store)
    kinds = kind_of(store)
    by_kind = dict.fromkeys(KIND_ORDER, 0)
    for e in rows:
        by_kind[kinds.get(e.digest, "other")] += e.size
    return {"total": sum(e.size for e in rows), "referenced": sum(e.size for e in rows if e.referenced),
            "artifacts": len(rows), "path": str(store.root), "kinds": by_kind,
            "ram": store.ram.used() if store.ram else 0, "ram_path": str(store.ram.root) if store.ram else None}


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


def verify_records(store: Store) -> list[str]:
    """Check every record against what can be recomputed and against its outputs' provenance
    (record_rules); a record that fails is removed, so the next build remakes its step. One line
    per removed record. Of records claiming one disk image from different derivations, imported
    ones go if a locally made one is among them, else all of them (which is right is unknowable)."""
    from banger.app import record_rules

    lines, kept = [], []
    for record, _ in list(store.records()):
        why = record_rules.problem(record)
        if why is None:
            kept.append(record)
        else:
            store.remove_record(record.key)
            lines.append(f"record {record.key[:12]} ({record.step}) removed: {why}")
    for digest, claimants in record_rules.conflicts(kept).items():
        imported = [r for r in claimants if "imported" in r.info]
        for record in imported if 0 < len(imported) < len(claimants) else claimants:
            store.remove_record(record.key)
            others = sorted({r.step for r in claimants if r is not record})
            lines.append(f"record {record.key[:12]} ({record.step}{', imported' if record in imported else ''}) "
                         f"removed: it claims {digest[:19]}…, which {'/'.join(others)} records derive "
                         "from other inputs")
    return lines


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
    bad_pins = pins.damaged(store.root)
    if bad_pins:  # likewise: it may pin a running VM's backing disk
        raise CacheError(f"nothing was evicted: {bad_pins[0]}")
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
    """Staging nobody owns any more, kept a day (a resumable download may still want it). A killed
    process's is gone already (Store removes it on open); a running one's stays however old."""
    now = time.time()
    for p in (store.root / "staging").iterdir():
        with contextlib.suppress(FileNotFoundError):
            if now - p.lstat().st_mtime > older_than and not procs.owner_alive(p.name):
                remove_tree(p) if p.is_dir() else p.unlink()


# ---- export / import: see cache_archive.py -------------------------------------------------
