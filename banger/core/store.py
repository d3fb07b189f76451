"""The content-addressed store: blobs, directory trees, action records, locks, stamps.

Layout under the cache dir:
    blobs/<alg>/<hex>         OCI-layout compatible blobs (layers, configs, disk images, ...)
    trees/<alg>/<hex>/        directory artifacts (flattened root filesystems)
    actions/<kk>/<key>.json   action records: key -> step, inputs, params, tools, outputs
    stamps/<alg>/<hex>        "verified at this stat()" stamps; their mtime is the last use
    locks/<key>.lock          one flock per action key; builds.lock: builds vs gc (inflight.py)
    staging/                  everything is written here first, then renamed into place
    images/<name>.json        named images: the roots the garbage collector keeps
    remote-repos.json         the registry repositories this cache pushed to (app/cache_remote_ops.py)
    .banger-cache             the marker that makes the dir banger's (cachedir.py)

Staging names carry their process's owner_tag (procs.py): opening a store removes those of
processes that are gone (a killed build's), never a live one's.

Trees are made in RAM instead when the store is given a RAM dir (see ram_trees.py).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import time
from pathlib import Path
from typing import Iterable, Iterator

from banger.core import cachedir, procs
from banger.core import digest as dg
from banger.core.cachedir import NotACacheError  # noqa: F401  (re-exported)
from banger.core.fsutil import atomic_write, remove_dead_staging, remove_tree, temp_dir
from banger.core import ram_trees
from banger.core.ram_trees import TREE, RamTrees
from banger.core.records import ActionRecord, DamagedRecord, action_key, parse_record, remakeable  # noqa: F401 (re-exported)



class StoreError(Exception):
    pass


def tree_digest(root: Path, known: dict[int, str] | None = None,
                seen: dict[int, tuple] | None = None, reuse: dict[int, tuple] | None = None) -> str:
    """blake3 over a sorted listing of (path, type, mode, content digest or link target).

    `known` maps inode numbers to content digests the caller computed while writing the files
    (the flatten step does, so a fresh tree is not read back). `seen` is filled with
    {inode: (size, mtime_ns, ctime_ns, content digest)}; a file whose inode, size, mtime and ctime
    are as in `reuse` (such a dict, from an earlier walk) is not read again."""
    known = known or {}
    reuse = reuse or {}
    h = dg.hasher("blake3")

    def walk(path: str, rel: str) -> None:
        with os.scandir(path) as it:
            entries = list(it)
        subdirs = sorted((e for e in entries if e.is_dir(follow_symlinks=False)), key=lambda e: e.name)
        for e in sorted((e for e in entries if not e.is_dir(follow_symlinks=False)), key=lambda e: e.name):
            st = e.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                line = f"L {rel}/{e.name} {os.readlink(e.path)}"
            elif stat.S_ISREG(st.st_mode):
                was = reuse.get(st.st_ino)
                content = (was[3] if was and was[:3] == (st.st_size, st.st_mtime_ns, st.st_ctime_ns) else None) \
                    or known.get(st.st_ino) or dg.of_file(Path(e.path), "blake3")[0]
                if seen is not None:
                    seen[st.st_ino] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, content)
                line = f"F {rel}/{e.name} {st.st_mode:o} {content}"
            else:
                line = f"O {rel}/{e.name} {st.st_mode:o}"
            h.update(line.encode("utf-8", "surrogateescape") + b"\n")
        for d in subdirs:
            line = f"D {rel}/{d.name} {d.stat(follow_symlinks=False).st_mode:o}\n"
            h.update(line.encode("utf-8", "surrogateescape"))
        for d in subdirs:
            walk(d.path, d.name if rel == "." else f"{rel}/{d.name}")

    walk(str(root), ".")
    return f"{TREE}blake3:{h.hexdigest()}"


class Store:
    def __init__(self, root: Path, volatile: Path | None = None):
        self.root = Path(root)
        cachedir.open_cache(self.root)
        for sub in ("blobs", "trees", "actions", "stamps", "locks", "staging", "images"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.ram = RamTrees(Path(volatile), self.root) if volatile else None
        self._trusted: set[str] = set()  # digests fully verified in this process
        self._tree_files: dict[str, dict[int, tuple]] = {}  # tree digest -> files as hashed (tree_intact)
        self.damaged: dict[str, str] = {}  # action key -> why its record was removed as damaged
        remove_dead_staging(self.root / "staging")
        if self.ram:  # what killed builds and deleted cache dirs left in RAM goes now
            self.ram.sweep_staging()
            self.ram.sweep_orphans()

    # ---- paths -------------------------------------------------------------------------------
    def path(self, digest: str) -> Path:
        if digest.startswith(TREE):
            alg, hexpart = dg.split(digest[len(TREE):])
            candidates = [home / alg / hexpart for home in self.tree_homes()]
            return next((p for p in candidates if p.exists()), candidates[-1])
        alg, hexpart = dg.split(digest)
        return self.root / "blobs" / alg / hexpart

    def tree_homes(self) -> list[Path]:
        return ([self.ram.trees] if self.ram and self.ram.ours() else []) + [self.root / "trees"]

    def _stamp(self, digest: str) -> Path:
        alg, hexpart = dg.split(digest.removeprefix(TREE))
        return self.root / "stamps" / (("tree-" if digest.startswith(TREE) else "") + alg) / hexpart

    # ---- staging -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def staging(self, prefix: str = "work-") -> Iterator[Path]:
        """A private directory on the store's filesystem, removed whatever happens."""
        with temp_dir(self.root / "staging", f"{prefix}{procs.owner_tag()}-") as path:
            yield path

    def tree_staging(self, expected_bytes: int) -> contextlib.AbstractContextManager[Path]:
        """Staging for a new tree: in RAM when there is room for it, else in the cache."""
        return (self.ram and self.ram.staging(expected_bytes)) or self.staging("tree-")

    def tree_room(self, stage: Path) -> int | None:
        """How many bytes a tree staged in `stage` may take (None: no limit, it is on disk)."""
        return self.ram.room() if self.ram and stage.is_relative_to(self.ram.root) else None

    def evict_volatile_trees(self, keep: Iterable[str] = ()) -> list[str]:
        return self.ram.evict(keep, self.remove) if self.ram else []

    def using(self, digests: Iterable[str]) -> contextlib.AbstractContextManager[None]:
        """Keeps eviction (trees) and drop (intermediate disk images) away from what a step reads."""
        return ram_trees.using(self.root / "locks", digests)

    def drop(self, digest: str) -> bool:
        """Remove a remakeable artifact (records.remakeable) unless a step is reading it (see
        `using`); True if it is gone."""
        return ram_trees.remove_unused(self.root / "locks", digest, self.remove)

    # ---- ingest ------------------------------------------------------------------------------
    def ingest_stream(self, chunks: Iterable[bytes], expected: str | None = None,
                      size: int | None = None, algorithm: str = "sha256") -> str:
        """Stream bytes into a blob; wrong digest or size raises and leaves nothing behind."""
        with self.staging("ingest-") as stage:
            tmp = stage / "blob"
            alg = dg.split(expected)[0] if expected else algorithm
            h = dg.hasher(alg)
            n = 0
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    h.update(chunk)
                    n += len(chunk)
            actual = f"{alg}:{h.hexdigest()}"
            self._check(actual, n, expected, size)
            return self._commit_file(tmp, actual)

    def ingest_file(self, path: Path, algorithm: str = "blake3", expected: str | None = None,
                    hashed: str | None = None) -> str:
        """Move a finished file (on the store's filesystem) into the store under its digest.
        `hashed`: its digest as the caller took it while writing every byte of it."""
        if hashed is not None and (expected is None or dg.split(hashed)[0] == dg.split(expected)[0]):
            actual, n = hashed, path.stat().st_size
        else:
            actual, n = dg.of_file(path, dg.split(expected)[0] if expected else algorithm)
        self._check(actual, n, expected, None)
        return self._commit_file(path, actual)

    def ingest_tree(self, path: Path, known: dict[int, str] | None = None) -> str:
        started, seen = time.time_ns(), {}
        digest = tree_digest(path, known, seen)
        if self.path(digest).exists():
            remove_tree(path)
        else:
            self._remember_tree(digest, seen, started)  # a rename keeps the inodes
            in_ram = self.ram is not None and path.is_relative_to(self.ram.root)
            home = self.tree_homes()[0 if in_ram else -1]  # rename: the same filesystem
            dest = home.joinpath(*dg.split(digest[len(TREE):]))
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(path, dest)
        self._write_stamp(digest)
        self._trusted.add(digest)
        return digest

    def _check(self, actual: str, n: int, expected: str | None, size: int | None) -> None:
        if size is not None and n != size:
            raise StoreError(f"size mismatch: expected {size} bytes, got {n}; nothing was cached")
        if expected is not None and actual != expected:
            raise StoreError(f"digest mismatch: expected {expected}, got {actual}; nothing was cached")

    def _commit_file(self, tmp: Path, digest: str) -> str:
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        dest = self.path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, dest)
        self._write_stamp(digest)
        self._trusted.add(digest)
        return digest

    # ---- read side -----------------------------------------------------------------------------
    def _stat_key(self, path: Path) -> str:
        st = path.stat()
        return f"{st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino}"

    def _write_stamp(self, digest: str) -> None:
        stamp = self._stamp(digest)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(stamp, self._stat_key(self.path(digest)).encode())

    def verify(self, digest: str, full: bool = False) -> bool:
        """True if the artifact is present and intact. A corrupt one is removed.

        Without `full`, an artifact whose stat() (size, mtime, ctime, inode) still matches the
        stamp written when it was last hashed is trusted: ctime cannot be set back by a write,
        so any modification forces a rehash. `banger cache verify` always rehashes.
        """
        path = self.path(digest)
        if not path.exists():
            return False
        if not full and digest in self._trusted:
            return True
        stamp = self._stamp(digest)
        if not full:
            try:
                if stamp.read_text() == self._stat_key(path):
                    self._trusted.add(digest)
                    return True
            except FileNotFoundError:
                pass
        if digest.startswith(TREE):
            started, seen = time.time_ns(), {}
            actual = tree_digest(path, seen=seen)
            if actual == digest:
                self._remember_tree(digest, seen, started)
        else:
            actual = dg.of_file(path, dg.split(digest)[0])[0]
        if actual != digest:
            self.remove(digest)
            return False
        self._write_stamp(digest)
        self._trusted.add(digest)
        return True

    RACY_NS = 2_000_000_000  # a file changed this close to a walk may keep its ctime when written again

    def _remember_tree(self, digest: str, seen: dict[int, tuple], started_ns: int) -> None:
        """Keep the files of a tree as it was hashed, but only those whose ctime is well before the
        walk: a later write then surely changes their ctime (timestamps come from a coarse clock)."""
        self._tree_files[digest] = {ino: v for ino, v in seen.items() if v[2] < started_ns - self.RACY_NS}

    def tree_intact(self, digest: str) -> bool:
        """After a step read a tree: does it still hold `digest`? Files whose stat() is as when this
        process hashed the tree are not read again (cheap); any other file is. A changed tree is
        removed (it is corrupt) and False returned."""
        path = self.path(digest)
        if path.is_dir() and tree_digest(path, reuse=self._tree_files.get(digest)) == digest:
            return True
        self.remove(digest)
        return False

    def verify_for_use(self, digest: str) -> bool:
        """Before a step reads an artifact: trusted if this process made or hashed it, else
        rehashed. For trees this matters: their stamp only sees the top directory's stat()."""
        return digest in self._trusted or self.verify(digest, full=True)

    def touch(self, digest: str) -> None:
        """Record a use (the stamp's mtime); gc evicts least recently used first."""
        with contextlib.suppress(FileNotFoundError):
            os.utime(self._stamp(digest))

    def last_used(self, digest: str) -> float:
        for p in (self._stamp(digest), self.path(digest)):
            with contextlib.suppress(FileNotFoundError):
                return p.stat().st_mtime
        return 0.0

    def remove(self, digest: str) -> None:
        path = self.path(digest)
        if digest.startswith(TREE):
            for home in self.tree_homes():
                remove_tree(home / path.relative_to(path.parent.parent))
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with contextlib.suppress(FileNotFoundError):
            self._stamp(digest).unlink()
        self._trusted.discard(digest)

    def size_of(self, digest: str) -> int:
        """Bytes on disk (allocated blocks, so a sparse disk image counts what it really uses)."""
        path = self.path(digest)
        if path.is_dir():
            return sum(os.lstat(os.path.join(d, f)).st_blocks * 512
                       for d, _, files in os.walk(path) for f in files)
        return path.stat().st_blocks * 512

    def artifacts(self) -> Iterator[str]:
        found = []
        for base, prefix in [(self.root / "blobs", "")] + [(home, TREE) for home in self.tree_homes()]:
            for algdir in sorted(base.iterdir()) if base.is_dir() else []:
                found += (f"{prefix}{algdir.name}:{entry.name}" for entry in sorted(algdir.iterdir()))
        yield from dict.fromkeys(found)

    # ---- action records ----------------------------------------------------------------------
    def _record_path(self, key: str) -> Path:
        return self.root / "actions" / key[:2] / f"{key}.json"

    def get_record(self, key: str) -> ActionRecord | None:
        """The record, or None; a damaged one is removed (the step runs again) and noted in
        `self.damaged` for the build to report."""
        try:
            data = self._record_path(key).read_bytes()
        except FileNotFoundError:
            return None
        try:
            return parse_record(data, key)
        except DamagedRecord as exc:
            self.remove_record(key)
            self.damaged[key] = str(exc)
            return None

    def put_record(self, record: ActionRecord) -> None:
        path = self._record_path(record.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(record.to_json(), indent=1, sort_keys=True).encode())

    def touch_record(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(self._record_path(key))

    def records(self) -> Iterator[tuple[ActionRecord, float]]:
        """Every readable record; damaged ones are removed (see get_record)."""
        for path in sorted((self.root / "actions").glob("*/*.json")):
            with contextlib.suppress(FileNotFoundError):
                mtime = path.stat().st_mtime
                record = self.get_record(path.stem)
                if record is not None:
                    yield record, mtime

    def remove_record(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._record_path(key).unlink()

    def record_valid(self, record: ActionRecord) -> bool:
        """Every output of the record is present and intact (verifying on first trust). Trees and
        intermediate disk images (records.remakeable) need not be present: a step that reads one
        remakes it first (Build.materialize)."""
        optional = remakeable(record)
        return all(name in optional or self.verify(d) for name, d in record.outputs.items())

    # ---- locking -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive per-action lock; a second builder of the same action waits here."""
        with open(self.root / "locks" / f"{key}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
