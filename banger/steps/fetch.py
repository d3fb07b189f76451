"""Step 1: resolve the image reference to digests, then fetch its blobs into the store.

Resolution happens once per build, before the tasks exist: a tag costs one HEAD request; the
manifest (and index) and the config are fetched only when not already in the store, where they
are kept as blobs like the layers. Every key downstream is a digest. The digest a tag resolved
to is remembered under `<store>/refs/`, so that with the registry unreachable a build can still
run from a warm cache (it says so). Then one `fetch:<hex12>` subtask per blob (config + layers).
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol
from urllib.parse import quote

from banger.engine import tasks as engine
from banger.oci import manifest as oci_manifest
from banger.core import progress
from banger.core.config import default_dirs, load_config
from banger.engine.tasks import Build, StepRun
from banger.core.errors import BuildError
from banger.oci.layout import LayoutSource
from banger.oci.reference import LayoutReference, Reference, ReferenceError, parse
from banger.engine.spec import BuildSpec
from banger.core.fsutil import atomic_write
from banger.core.store import Store, StoreError

VERSION = "1"
MAX_CONFIG_BYTES = 8 << 20
MAX_NESTING = 3


class Source(Protocol):
    kind: str

    def resolve(self) -> tuple[dict, bytes | None]: ...
    def manifest(self, desc: dict) -> tuple[bytes, str]: ...
    def fetch_blob(self, store: Store, desc: dict, progress=None) -> str: ...


@dataclass
class ResolvedImage:
    ref: str  # normalized reference
    name: str  # the image name (spec.name or one derived from the reference)
    source: str  # "registry" | "oci-layout"
    manifest_digest: str  # the platform's image manifest
    manifest: dict
    config_digest: str
    config: dict
    layers: list[dict]  # OCI descriptors {mediaType, digest, size}, base layer first
    diff_ids: list[str]
    platform: str  # "linux/amd64"
    offline: bool = False  # resolved from the remembered digest: the registry was unreachable
    index_digest: str | None = None  # the index the platform was picked from, if there was one
    blobs: list[dict] = field(default_factory=list)  # what the fetch subtasks fetch: config + layers


def open_source(ref: Reference | LayoutReference, build: Build) -> Source:
    if isinstance(ref, LayoutReference):
        return LayoutSource(ref)
    return LazyRegistrySource(ref, insecure_registries(build))


class LazyRegistrySource:
    """The registry client, made (and `requests` imported) only when the network is needed:
    a build of a digest-pinned, fully cached image never needs it."""
    kind = "registry"

    def __init__(self, ref: Reference, insecure: list[str]):
        self._args = (ref, insecure)
        self._real = None

    def __getattr__(self, name: str):
        if self._real is None:
            from banger.oci.registry import RegistrySource

            ref, insecure = self._args
            self._real = RegistrySource(ref, insecure=insecure)
        return getattr(self._real, name)


def insecure_registries(build: Build) -> list[str]:
    config = build.context.get("config")
    if config is None:
        config = load_config(build.context.get("dirs") or default_dirs())
    value = config.get("insecure_registries", [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BuildError('insecure_registries in banger\'s config must be a list of "host[:port]" strings')
    return value


def resolve(build: Build, spec: BuildSpec) -> ResolvedImage:
    try:
        ref = parse(spec.image)
    except ReferenceError as exc:
        raise BuildError(str(exc)) from None
    want = oci_manifest.parse_platform(spec.platform) if spec.platform else oci_manifest.host_platform()
    source = open_source(ref, build)
    build.context["image_source"] = source  # the fetch subtasks pull through it
    where = str(ref)
    top, body, offline = _resolve_top(build, ref, source)
    media_type, doc, digest = _load_manifest(build.store, source, top, body, where)
    index_digest = None
    for _ in range(MAX_NESTING + 1):
        if not oci_manifest.is_index(media_type):
            break
        index_digest = index_digest or digest
        child = oci_manifest.select(doc, want, where)
        media_type, doc, digest = _load_manifest(build.store, source, child, None, where)
    else:
        raise BuildError(f"{where}: image indexes nested more than {MAX_NESTING} deep; refusing it")
    config_desc = doc["config"]
    config = _load_config(build.store, source, config_desc, where)
    have = oci_manifest.check_config(config, want, where)
    layers = doc["layers"]
    diff_ids = _diff_ids(config, len(layers), where)
    if isinstance(ref, Reference) and ref.digest is None and not offline:
        _remember(build.store, ref, top)
    return ResolvedImage(
        ref=where, name=spec.name or ref.default_name, source=source.kind, manifest_digest=digest,
        manifest=doc, config_digest=config_desc["digest"], config=config, layers=layers,
        diff_ids=diff_ids, platform=str(have), offline=offline, index_digest=index_digest,
        blobs=[config_desc, *layers])


def tasks(build: Build, spec: BuildSpec) -> Iterator[dict]:
    image: ResolvedImage | None = build.context.get("image")
    if image is None:
        image = build.context["image"] = resolve(build, spec)
    source = build.context["image_source"]
    seen: set[str] = set()
    for desc in image.blobs:
        digest = desc["digest"]
        if digest in seen:
            continue
        seen.add(digest)
        yield engine.step_task(build, name="fetch", subtask=digest.split(":", 1)[1][:12], version=VERSION,
                               inputs=lambda d=digest: {"blob": d},
                               work=functools.partial(fetch_blob, source, desc),
                               doc=f"fetch blob {digest[:19]}", spinner=False)


def fetch_blob(source: Source, desc: dict, run: StepRun) -> dict[str, str]:
    """Stream one blob into the store, verified (resuming a partial download)."""
    bar = run.build.context.get("progress") or progress.bar
    label = f"fetch {desc['digest'][7:19]}"
    with bar(label, int(desc.get("size") or 0)) as report:
        digest = source.fetch_blob(run.store, desc, report)
    run.info["size"] = desc.get("size")
    return {"blob": digest}


# ---- resolution helpers -------------------------------------------------------------------------

def _resolve_top(build: Build, ref: Reference | LayoutReference, source: Source) -> tuple[dict, bytes | None, bool]:
    if isinstance(ref, Reference) and ref.digest:
        return {"digest": ref.digest}, None, False
    if not isinstance(ref, Reference):
        desc, body = source.resolve()
        return desc, body, False
    from banger.oci.registry_http import Unreachable

    try:
        desc, body = source.resolve()
    except Unreachable:
        remembered = _remembered(build.store, ref)
        if remembered is None:
            raise
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(remembered.pop("resolved_at", 0)))
        build.log(f"registry {ref.registry} is unreachable; building {ref} offline from "
                  f"{remembered['digest']}, which the tag resolved to on {when} (warm cache)")
        return remembered, None, True
    return desc, body, False


def _load_manifest(store: Store, source: Source, desc: dict, body: bytes | None, where: str) -> tuple[str, dict, str]:
    """(media type, document, digest) of a manifest or index: from the store, else the source."""
    digest = desc["digest"]
    cached = body is None and store.verify(digest)
    if cached:
        body, declared = store.path(digest).read_bytes(), ""
    elif body is None:
        body, declared = source.manifest(desc)
    else:
        declared = desc.get("mediaType", "")
    media_type, doc = oci_manifest.parse(body, declared, where)
    said = desc.get("mediaType", "")
    if said not in oci_manifest.GENERIC_TYPES and said != media_type:
        raise BuildError(f"{where}: {digest} was declared {said} but is {media_type}; refusing a mislabelled manifest")
    if desc.get("size") is not None and desc["size"] != len(body):
        raise BuildError(f"{where}: manifest {digest} is {len(body)} bytes, its descriptor says {desc['size']}")
    if not cached:
        try:
            store.ingest_stream([body], expected=digest)
        except StoreError as exc:
            raise BuildError(f"{where}: {exc}") from None
    return media_type, doc, digest


def _load_config(store: Store, source: Source, desc: dict, where: str) -> dict:
    if desc["size"] > MAX_CONFIG_BYTES:
        raise BuildError(f"{where}: image config {desc['digest']} is {desc['size']} bytes; refusing it")
    digest = desc["digest"] if store.verify(desc["digest"]) else source.fetch_blob(store, desc)
    try:
        config = json.loads(store.path(digest).read_bytes())
    except (ValueError, UnicodeDecodeError):
        raise BuildError(f"{where}: image config {digest} is not valid JSON") from None
    if not isinstance(config, dict):
        raise BuildError(f"{where}: image config {digest} is not a JSON object")
    return config


def _diff_ids(config: dict, n_layers: int, where: str) -> list[str]:
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) and oci_manifest.SHA256_RE.fullmatch(d) for d in diff_ids):
        raise BuildError(f"{where}: the image config has no valid rootfs.diff_ids")
    if len(diff_ids) != n_layers:
        raise BuildError(f"{where}: the manifest has {n_layers} layers but the config lists {len(diff_ids)} diff_ids")
    return diff_ids


# ---- remembered tags (offline fallback) ---------------------------------------------------------

def _ref_file(store: Store, ref: Reference) -> Path:
    return store.root / "refs" / quote(ref.registry, safe="") / ref.repository / f"{ref.tag}.json"


def _remember(store: Store, ref: Reference, desc: dict) -> None:
    path = _ref_file(store, ref)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {k: desc[k] for k in ("digest", "mediaType", "size") if desc.get(k) is not None}
    atomic_write(path, json.dumps({**entry, "resolved_at": time.time()}, sort_keys=True).encode())


def _remembered(store: Store, ref: Reference) -> dict | None:
    try:
        entry = json.loads(_ref_file(store, ref).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(entry, dict) or not oci_manifest.SHA256_RE.fullmatch(str(entry.get("digest"))):
        return None
    return entry
