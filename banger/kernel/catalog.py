"""The kernel catalog (`catalog.json`) and `kernel pull`.

A catalog is {"kernels": [entry, ...]}. An entry is either a built-in source
    {"name": "debian-cloud-amd64", "source": "debian:cloud-amd64", "description": "..."}
or a downloadable bundle
    {"name": "...", "url": "bundle.tar.zst", "sha256": "<hex>", "size": 123, "version": "...",
     "arch": "amd64", "description": "..."}
where `url` may be relative to the catalog's own location (file or http(s)). The archive holds a
bundle layout or anything `kernel import --from` understands, optionally inside one top-level
directory. It is streamed: sha256 is computed while the bytes go through zstd and tar into a
staging directory; nothing is renamed into place until the digest matched.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
import tarfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator
from urllib.parse import urljoin, urlparse

from banger.core import config
from banger.kernel import apt, bundle as kernel_bundle, debian as kernel_deb
from banger.kernel.bundle import Bundle, KernelError, Log, commit, complete, kernels_dir, staging, validate_name
from banger.kernel.sources import stage_from_dir

CHUNK = 1 << 20
MAX_BUNDLE_BYTES = 8 << 30  # decompressed; a kernel with all modules is a few hundred MB
TIMEOUT = (10, 60)  # connect, read (seconds)


@dataclass(frozen=True)
class Entry:
    name: str
    source: str  # "debian:<flavour>" or an absolute URL / file path of a .tar.zst
    sha256: str | None = None
    size: int | None = None
    version: str | None = None
    arch: str | None = None
    description: str = ""

    @property
    def builtin(self) -> bool:
        return self.source.startswith("debian:")


@dataclass(frozen=True)
class Catalog:
    origin: str
    entries: list[Entry]

    def find(self, name: str) -> Entry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        known = ", ".join(e.name for e in self.entries) or "none"
        raise KernelError(f"no kernel {name!r} in the catalog {self.origin} (known: {known}); "
                          "see `banger kernel list --available`")


def _is_url(ref: str) -> bool:
    return urlparse(ref).scheme in ("http", "https")


def load_catalog(ref: str | None = None) -> Catalog:
    """The shipped catalog, or one from a file path or http(s) URL."""
    if ref is None:
        text = resources.files("banger.kernel").joinpath("catalog.json").read_text()
        origin, base = "(built in)", None
    elif _is_url(ref):
        text = _http_get_text(ref, "catalog")
        origin, base = ref, ref
    else:
        path = Path(ref)
        try:
            text = path.read_text()
        except OSError as exc:
            raise KernelError(f"cannot read catalog {ref}: {exc.strerror}") from None
        origin, base = str(path), str(path.resolve())
    try:
        data = json.loads(text)
        raw_entries = data["kernels"]
        entries = [_entry(e, base) for e in raw_entries]
    except (ValueError, KeyError, TypeError) as exc:
        raise KernelError(f"catalog {origin} is malformed ({exc}); expected "
                          '{"kernels": [{"name": ..., "url": ..., "sha256": ...}]}') from None
    return Catalog(origin, entries)


def _entry(raw: dict, base: str | None) -> Entry:
    name = validate_name(raw["name"])
    source = raw.get("source") or raw.get("url")
    if not isinstance(source, str) or not source:
        raise ValueError(f"entry {name} has neither source nor url")
    if not source.startswith("debian:"):
        if base is not None and not _is_url(source) and not os.path.isabs(source):
            source = urljoin(base, source) if _is_url(base) else str(Path(base).parent / source)
        sha = raw.get("sha256")
        if not isinstance(sha, str) or len(sha.removeprefix("sha256:")) != 64:
            raise ValueError(f"entry {name} needs a sha256 of its archive")
    size = raw.get("size")
    return Entry(name=name, source=source, sha256=(raw.get("sha256") or "").removeprefix("sha256:") or None,
                 size=int(size) if size is not None else None, version=raw.get("version"),
                 arch=raw.get("arch"), description=str(raw.get("description", "")))


def _http_get_text(url: str, what: str) -> str:
    import requests

    try:
        resp = requests.get(url, timeout=TIMEOUT)
    except requests.RequestException as exc:
        raise KernelError(f"cannot fetch {what} {url}: {type(exc).__name__}") from None
    if resp.status_code != 200:
        raise KernelError(f"cannot fetch {what} {url}: HTTP {resp.status_code} {resp.reason}")
    return resp.text


# ---- pull ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pulled:
    bundle: Bundle
    fresh: bool  # False: the bundle was already installed and nothing was downloaded
    offer: str | None = None  # what the source offers now, when that differs from the installed one

    def message(self) -> str:
        b = self.bundle
        if self.fresh:
            return f"pulled kernel {b.name} ({b.version}) at {b.path}"
        offer = f"; {self.offer}" if self.offer else ""
        return f"kernel {b.name} ({b.version}) is already pulled at {b.path}{offer}; use --force to pull it again"


def pull(dirs: config.Dirs, name: str, catalog_ref: str | None = None, force: bool = False,
         busybox: Path | None = None, log: Log | None = None) -> Pulled:
    """Install the kernel `name` (a catalog entry, or a built-in source like debian:cloud-amd64);
    an installed bundle of that name is kept (fresh=False) unless `force`."""
    log = log or (lambda msg: None)
    entry = None
    if name.startswith("debian:"):
        flavour = name.split(":", 1)[1]
        bundle_name = validate_name(f"debian-{flavour}")
    else:
        entry = load_catalog(catalog_ref).find(validate_name(name))
        flavour = entry.source.split(":", 1)[1] if entry.builtin else None
        bundle_name = entry.name
    if not force and (kernels_dir(dirs) / bundle_name).exists():
        try:
            installed = kernel_bundle.load(dirs, bundle_name)
        except KernelError as exc:
            raise KernelError(f"kernel {bundle_name!r} is installed but unreadable ({exc}); "
                              "use --force to pull it again") from None
        return Pulled(installed, fresh=False, offer=_offer(installed, flavour, entry))
    if flavour is not None:
        return Pulled(kernel_deb.pull(dirs, flavour, name=bundle_name, force=force, busybox=busybox, log=log),
                      fresh=True)
    assert entry is not None
    log(f"downloading {entry.source}")
    with staging(dirs, name) as work:
        tree = work / "archive"
        tree.mkdir()
        with _Source(entry.source) as chunks:
            reader = HashingReader(chunks)
            extract_tar_zst(reader, tree)
            reader.drain()
        if entry.size is not None and reader.size != entry.size:
            raise KernelError(f"kernel {name}: downloaded {reader.size} bytes, the catalog says "
                              f"{entry.size}; nothing was installed")
        if reader.hexdigest() != entry.sha256:
            raise KernelError(f"kernel {name}: sha256 mismatch (catalog {entry.sha256[:12]}..., "
                              f"got {reader.hexdigest()[:12]}...); nothing was installed")
        staged = stage_from_dir(_single_top(tree), work / "bundle", move=True)
        complete(staged, busybox, log)
        return Pulled(commit(dirs, name, staged, source=entry.source, force=force), fresh=True)


def _offer(installed: Bundle, flavour: str | None, entry: Entry | None) -> str | None:
    """What the source offers that differs from the installed bundle (None: the same, or unknown)."""
    if flavour is not None:
        try:
            package = apt.resolve_image_package(flavour)  # the local apt lists; no download
        except KernelError:
            return None
        return None if installed.manifest.info.get("package") == package else f"apt now offers {package}"
    if entry is not None and entry.version not in (None, installed.version):
        return f"the catalog now offers {entry.version}"
    return None


class _Source:
    def __init__(self, ref: str):
        self.ref = ref
        self.resp = None
        self.file = None

    def __enter__(self) -> Iterator[bytes]:
        if _is_url(self.ref):
            import requests

            try:
                self.resp = requests.get(self.ref, stream=True, timeout=TIMEOUT)
            except requests.RequestException as exc:
                raise KernelError(f"cannot download {self.ref}: {type(exc).__name__}") from None
            if self.resp.status_code != 200:
                code, reason = self.resp.status_code, self.resp.reason
                self.resp.close()
                raise KernelError(f"cannot download {self.ref}: HTTP {code} {reason}")
            return self.resp.iter_content(CHUNK)
        path = Path(self.ref.removeprefix("file://"))
        try:
            self.file = open(path, "rb")
        except OSError as exc:
            raise KernelError(f"cannot read {path}: {exc.strerror}") from None
        return iter(lambda: self.file.read(CHUNK), b"")

    def __exit__(self, *exc) -> None:
        if self.resp is not None:
            self.resp.close()
        if self.file is not None:
            self.file.close()


class HashingReader(io.RawIOBase):
    """A read-only stream over byte chunks that hashes (sha256) and counts what passes through."""

    def __init__(self, chunks: Iterator[bytes]):
        import hashlib

        self.chunks = iter(chunks)
        self.hash = hashlib.sha256()
        self.size = 0
        self.buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self.buf:
            try:
                chunk = next(self.chunks)
            except StopIteration:
                return 0
            except OSError as exc:
                raise KernelError(f"download interrupted: {exc}") from None
            self.hash.update(chunk)
            self.size += len(chunk)
            self.buf = memoryview(chunk)
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n

    def drain(self) -> None:
        """Consume the rest (trailing tar padding) so the digest covers the whole file."""
        for chunk in self.chunks:
            self.hash.update(chunk)
            self.size += len(chunk)
        self.buf = memoryview(b"")

    def hexdigest(self) -> str:
        return self.hash.hexdigest()


def extract_tar_zst(stream: io.RawIOBase, dest: Path) -> None:
    """Stream-extract a .tar.zst into dest, refusing anything that could land outside it."""
    import zstandard

    try:
        reader = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            total = 0
            for member in tar:
                total += member.size
                if total > MAX_BUNDLE_BYTES:
                    raise KernelError(f"archive expands beyond {MAX_BUNDLE_BYTES >> 30} GiB; refusing it")
                _extract_member(tar, member, dest)
    except zstandard.ZstdError as exc:
        raise KernelError(f"archive is not valid zstd ({exc})") from None
    except tarfile.TarError as exc:
        raise KernelError(f"archive is not a valid tar ({exc})") from None
    except OSError as exc:
        raise KernelError(f"cannot extract the archive: {exc}") from None


def _member_path(dest: Path, name: str) -> Path:
    norm = posixpath.normpath(name)
    if name.startswith("/") or norm == ".." or norm.startswith("../") or "\0" in name:
        raise KernelError(f"archive member {name!r} points outside the bundle; refusing the archive")
    if norm == ".":
        return dest
    # no component may be a symlink we created earlier (a link + a file through it = escape)
    current = dest
    for part in norm.split("/")[:-1]:
        current = current / part
        if current.is_symlink():
            raise KernelError(f"archive member {name!r} goes through a symlink; refusing the archive")
    return dest / norm


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
    path = _member_path(dest, member.name)
    if path == dest:
        return
    if os.path.lexists(path) and not (member.isdir() and path.is_dir() and not path.is_symlink()):
        raise KernelError(f"archive member {member.name!r} appears twice; refusing the archive")
    path.parent.mkdir(parents=True, exist_ok=True)
    if member.isdir():
        path.mkdir(exist_ok=True)
    elif member.isreg():
        src = tar.extractfile(member)
        assert src is not None
        with open(path, "wb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
        os.chmod(path, 0o755 if member.mode & 0o111 else 0o644)
    elif member.issym():
        target = member.linkname
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(posixpath.normpath(member.name)), target))
        if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise KernelError(f"archive symlink {member.name!r} -> {target!r} points outside the bundle; "
                              "refusing the archive")
        os.symlink(target, path)
    elif member.islnk():
        target = _member_path(dest, member.linkname)
        if not target.is_file() or target.is_symlink():
            raise KernelError(f"archive hard link {member.name!r} -> {member.linkname!r} has no target")
        os.link(target, path)
    else:
        kind = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device",
                tarfile.FIFOTYPE: "fifo"}.get(member.type, f"type {member.type!r}")
        raise KernelError(f"archive member {member.name!r} is a {kind}; a kernel bundle has none")


def _single_top(tree: Path) -> Path:
    """Descend into the archive's single top-level directory, if that is all it holds."""
    entries = list(tree.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return tree


# ---- listing ---------------------------------------------------------------------------------
def available(dirs: config.Dirs, catalog_ref: str | None = None, resolve: bool = True) -> list[dict]:
    """Catalog entries with their state (pulled / available), version and size where known
    (resolve=False: without asking the distro's mirror for its current package, as `banger ui`)."""
    rows = []
    for entry in load_catalog(catalog_ref).entries:
        row = {"name": entry.name, "source": entry.source, "version": entry.version,
               "arch": entry.arch, "size": entry.size, "description": entry.description}
        if entry.builtin and resolve:
            try:
                package = apt.resolve_image_package(entry.source.split(":", 1)[1])
                info = apt.package_info(package)
                row["version"] = package.removeprefix("linux-image-")
                row["size"] = int(info["Size"]) if "Size" in info else None
            except (KernelError, ValueError):
                pass
        try:
            bundle = kernel_bundle.load(dirs, entry.name)
            row["state"] = "pulled" if row["version"] in (None, bundle.version) else "outdated"
            row["pulled_version"] = bundle.version
        except KernelError:
            row["state"] = "available"
        rows.append(row)
    return rows


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
