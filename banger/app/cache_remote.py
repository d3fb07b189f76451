"""The artifact cache through an OCI registry: `banger cache push/pull` and a build's
`--cache-to/--cache-from` (the layout of one action in the registry: remote_layout.py).

A pull trusts nothing it is served. The record's key is recomputed from its contents
(records.parse_record) and it must pass the checks an imported record passes (record_rules: a
fetch outputs its input, a flatten's chain id, one derivation per disk image); every output is
downloaded into a scratch directory, sha256-verified, decoded and checked against its banger
digest. Only then do the outputs and the record enter the store: a mismatch is RemoteRefused,
one line, and nothing is cached.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

from banger.app import cache_signing as signing
from banger.app import record_rules
from banger.app.cache_signing import Signer
from banger.app import remote_layout as layout
from banger.app.archive_io import ArchiveError
from banger.app.cache import CacheError, image_closure
from banger.app.cache_archive import max_import_bytes
from banger.core import images
from banger.core.errors import BuildError
from banger.core.records import DamagedRecord, intermediates, parse_record, remakeable
from banger.core.store import TREE, ActionRecord, Store, StoreError
from banger.oci import registry_push as push
from banger.oci.reference import Reference, ReferenceError
from banger.oci.reference import parse as parse_reference
from banger.oci.registry import RegistryClient

ACCEPT = layout.MANIFEST_TYPE


class RemoteRefused(CacheError):
    """A registry entry that is not what it claims (a poisoned or broken entry)."""


@dataclass
class PushStats:
    actions_sent: int = 0
    actions_present: int = 0
    blobs_sent: int = 0
    blobs_present: int = 0
    blobs_mounted: int = 0  # taken from another repository of the registry (no bytes sent)
    bytes_sent: int = 0
    images: list[str] = field(default_factory=list)


def client_for(target: str, insecure: Iterable[str] = (), session=None) -> RegistryClient:
    """A pushing client for REGISTRY/REPO (no tag or digest)."""
    try:
        ref = parse_reference(target)
    except ReferenceError as exc:
        raise CacheError(f"{target!r} is not REGISTRY/REPO: {exc}") from None
    if not isinstance(ref, Reference) or ref.tag != "latest" or ref.digest:
        raise CacheError(f"{target!r} is not REGISTRY/REPO; name a registry host and a repository, no tag")
    return push.push_client(ref.registry, ref.repository, insecure=insecure, session=session)


# ---- push ----------------------------------------------------------------------------------------
def _config_bytes(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _send_blob(client: RegistryClient, desc: dict, path_or_data, stats: PushStats,
               mount_from: Sequence[str] = ()) -> None:
    """Send a blob the repository lacks: mounted from one of `mount_from` (other repositories of
    the registry that may hold it) when one does, else uploaded."""
    if push.has_blob(client, desc["digest"]):
        stats.blobs_present += 1
        return
    location = push.mount_blob(client, desc["digest"], mount_from)
    if location is None:
        stats.blobs_mounted += 1
        return
    if isinstance(path_or_data, bytes):
        stats.bytes_sent += push.upload_bytes(client, path_or_data, desc["digest"], location)
    else:
        stats.bytes_sent += push.upload_blob(client, path_or_data, desc["digest"], location)
    stats.blobs_sent += 1


def _manifest(artifact_type: str, config: bytes, layers: list[dict], annotations: dict) -> dict:
    from banger.core import digest as dg

    return {"schemaVersion": 2, "mediaType": layout.MANIFEST_TYPE, "artifactType": artifact_type,
            "config": {"mediaType": artifact_type, "digest": dg.of_bytes(config), "size": len(config)},
            "layers": layers or [layout.EMPTY], "annotations": annotations}


def _same_entry(client: RegistryClient, tag: str, config: bytes, signer: Signer | None) -> bool:
    """The tag holds a manifest whose config is exactly `config`, signed by `signer` if given
    (then nothing needs sending)."""
    from banger.core import digest as dg

    if push.has_manifest(client, tag, ACCEPT) is None:
        return False
    body, _, _ = client.get_manifest(tag)
    try:
        manifest = json.loads(body)
        signed = signer is None or (manifest.get("annotations") or {}).get(signing.A_SIGNED_BY) == signer.public
        return manifest["config"]["digest"] == dg.of_bytes(config) and signed
    except (ValueError, KeyError, TypeError, AttributeError):
        return False


def _signed(manifest: dict, tag: str, signer: Signer | None) -> dict:
    if signer is not None:
        manifest["annotations"] = {**manifest["annotations"],
                                   **signer.annotations(tag, manifest["config"]["digest"])}
    return manifest


def push_action(client: RegistryClient, store: Store, record: ActionRecord, stats: PushStats,
                signer: Signer | None = None, mount_from: Sequence[str] = ()) -> None:
    tag = layout.action_tag(record.key)
    config = _config_bytes(record.to_json())
    if _same_entry(client, tag, config, signer):
        stats.actions_present += 1
        return
    with store.staging("push-") as stage:
        layers = []
        for name, digest in sorted(record.outputs.items()):
            if digest in intermediates(record) or digest.startswith(TREE) and not store.path(digest).exists():
                continue  # a step that reads it remakes it (Build.materialize): never sent
            if not store.verify(digest):
                raise CacheError(f"output {name} of {record.step} ({digest[:24]}…) is not in the cache or "
                                 "corrupt; rebuild the image before pushing it")
            layer = layout.encode(store, name, digest, stage)
            _send_blob(client, layer.descriptor, layer.path, stats, mount_from)
            layers.append(layer.descriptor)
        manifest = _signed(_manifest(layout.ACTION_TYPE, config, layers,
                                     {"dev.banger.key": record.key, "dev.banger.step": record.step}), tag, signer)
        _send_blob(client, manifest["config"], config, stats, mount_from)
        if manifest["layers"] == [layout.EMPTY]:
            _send_blob(client, layout.EMPTY, b"{}", stats, mount_from)
        push.put_manifest(client, tag, manifest, layout.MANIFEST_TYPE)
    stats.actions_sent += 1


def push_image(client: RegistryClient, store: Store, name: str, stats: PushStats,
               signer: Signer | None = None, mount_from: Sequence[str] = ()) -> None:
    """The image's records and outputs, then its image record. A blob the repository lacks is
    mounted from `mount_from` (other repositories of the registry) and the repository the image
    was pulled from, when that is on the same registry, before it is uploaded."""
    image = images.load(store, name)
    keys, _ = image_closure(store, image)
    sources = [r for r in [*mount_from, *source_repositories(client, [image])] if r != client.repository]
    sources = list(dict.fromkeys(sources))[:MAX_MOUNT_SOURCES]
    for key in sorted(keys):
        record = store.get_record(key)
        if record is None:
            raise CacheError(f"image {name}: the record of step {key[:12]} is not in the cache; rebuild it first")
        push_action(client, store, record, stats, signer, sources)
    config = images._path(store, name).read_bytes()
    tag = layout.image_tag(name)
    if not _same_entry(client, tag, config, signer):
        manifest = _signed(_manifest(layout.IMAGE_TYPE, config, [], {"dev.banger.image": name}), tag, signer)
        _send_blob(client, manifest["config"], config, stats, sources)
        _send_blob(client, layout.EMPTY, b"{}", stats, sources)
        push.put_manifest(client, tag, manifest, layout.MANIFEST_TYPE)
    stats.images.append(name)


MAX_MOUNT_SOURCES = 4  # repositories a missing blob may be mounted from (one request each at worst)


def source_repositories(client: RegistryClient, pushed: Iterable[images.ImageRecord]) -> list[str]:
    """The repositories of the client's registry the images were pulled from (their fetched
    layers are blobs there: the fetch step's outputs go up as they are)."""
    repos = []
    for image in pushed:
        try:
            ref = parse_reference(image.ref)
        except (ReferenceError, TypeError, ValueError):
            continue
        if isinstance(ref, Reference) and ref.registry == client.registry:
            repos.append(ref.repository)
    return repos


# ---- pull ----------------------------------------------------------------------------------------
def _entry(client: RegistryClient, tag: str, artifact_type: str) -> tuple[dict, bytes] | None:
    """(manifest, config bytes) of the tag, or None when the registry has no such tag."""
    if push.has_manifest(client, tag, ACCEPT) is None:
        return None
    body, _, _ = client.get_manifest(tag)
    try:
        manifest = json.loads(body)
        ok = manifest.get("artifactType") == artifact_type and manifest["config"]["mediaType"] == artifact_type
        config_digest = manifest["config"]["digest"]
        layers = manifest.get("layers")
    except (ValueError, KeyError, TypeError, AttributeError):
        ok, config_digest, layers = False, None, None
    if not ok or not isinstance(config_digest, str) or not isinstance(layers, list):
        raise RemoteRefused(f"{tag} is not a banger {artifact_type.split('.')[-2]} entry; nothing was cached")
    try:
        return manifest, push.read_small_blob(client, config_digest)
    except BuildError as exc:
        if str(exc).startswith("digest mismatch"):
            raise RemoteRefused(str(exc)) from None
        raise


def pull_action(client: RegistryClient, store: Store, key: str, trusted: Sequence[str] = ()) -> ActionRecord | None:
    """The record of `key` from the registry, with its outputs, verified and put in the store;
    None when the registry has no entry for it; RemoteRefused (nothing cached) if it is wrong."""
    where = f"{client.registry}/{client.repository}"
    try:
        found = _entry(client, layout.action_tag(key), layout.ACTION_TYPE)
    except RemoteRefused as exc:
        raise RemoteRefused(f"refused the entry for {key[:12]} from {where}: {exc}") from None
    if found is None:
        return None
    manifest, config = found
    untrusted = signing.problem(manifest, layout.action_tag(key), manifest["config"]["digest"], list(trusted))
    if untrusted:
        raise RemoteRefused(f"refused the entry for {key[:12]} from {where}: {untrusted}; nothing was cached")
    try:
        record = parse_record(config, key)
    except DamagedRecord as exc:
        raise RemoteRefused(f"refused the entry for {key[:12]} from {where}: {exc}; nothing was cached") from None
    why = record_rules.problem(record)
    if why is None:
        local = [r for r, _ in store.records() if r.key != key]
        if any(record in rs for rs in record_rules.conflicts([*local, record]).values()):
            why = "it claims a disk image that other inputs made"
    if why:
        raise RemoteRefused(f"refused the entry for {key[:12]} ({record.step}) from {where}: {why}; nothing was cached")
    try:
        _fetch_outputs(client, store, record, manifest["layers"])
    except (ArchiveError, StoreError) as exc:
        raise RemoteRefused(f"refused the entry for {key[:12]} ({record.step}) from {where}: {exc}; "
                            "nothing was cached") from None
    except BuildError as exc:
        if str(exc).startswith("digest mismatch"):
            raise RemoteRefused(f"refused the entry for {key[:12]} ({record.step}) from {where}: {exc}") from None
        raise
    record.info = {**record.info, "imported": {"remote": where, "at": time.time()}}
    store.put_record(record)
    return record


def _fetch_outputs(client: RegistryClient, store: Store, record: ActionRecord, layers: list) -> None:
    wanted = [layer for layer in layers if not (isinstance(layer, dict) and layer.get("mediaType") == layout.EMPTY["mediaType"])]
    checked = [layout.check_layer(desc, record.outputs) for desc in wanted]
    names = [c[0] for c in checked]
    blobs = set(record.outputs) - remakeable(record)  # trees and intermediate images may be left out
    if len(set(names)) != len(names) or not blobs <= set(names):
        raise ArchiveError("its layers are not its outputs")
    cap = max_import_bytes()  # a decoded output may not be larger (a zstd bomb fills no disk)
    for name, _, _, size in checked:
        if size > cap:
            raise ArchiveError(f"its output {name!r} would be {size} bytes, over the cap of {cap} "
                               "(for larger ones, set BANGER_IMPORT_MAX_BYTES)")
    with store.staging("pull-") as stage:
        scratch = Store(stage / "download")  # a layer is not an artifact: it never enters the store
        ready: list[tuple[str, object]] = []
        for desc, (name, digest, encoding, size) in zip(wanted, checked):
            if store.path(digest).exists() and store.verify(digest):
                continue
            fetched = client.fetch_blob(scratch, {"digest": desc["digest"], "size": desc.get("size")})
            ready.append((digest, layout.decode(scratch.path(fetched), digest, encoding, size, stage)))
        for digest, path in ready:  # everything checked: now into the store
            if digest.startswith(TREE):
                if store.ingest_tree(path) != digest:
                    raise ArchiveError(f"tree {digest[:24]}… changed while it was pulled")
            else:  # hashed: its digest was checked while it was decoded (or downloaded)
                store.ingest_file(path, expected=digest, hashed=digest)


def pull_image(client: RegistryClient, store: Store, name: str, trusted: Sequence[str] = ()) -> dict:
    """An image's records and outputs, then its image record (a local image of that name that
    differs is kept). Returns what was pulled."""
    where = f"{client.registry}/{client.repository}"
    if not images.NAME_RE.fullmatch(name):
        raise CacheError(f"{name!r} is not a valid image name (lowercase letters, digits, . _ -)")
    try:
        found = _entry(client, layout.image_tag(name), layout.IMAGE_TYPE)
    except RemoteRefused as exc:
        raise RemoteRefused(f"refused image {name} from {where}: {exc}") from None
    if found is None:
        raise CacheError(f"{where} has no image {name}; push it with `banger cache push {where} --image {name}`")
    untrusted = signing.problem(found[0], layout.image_tag(name), found[0]["config"]["digest"], list(trusted))
    if untrusted:
        raise RemoteRefused(f"refused image {name} from {where}: {untrusted}; nothing was cached")
    try:
        image = images.ImageRecord(**json.loads(found[1]))
        steps_ok = isinstance(image.steps, list) and all(isinstance(s, dict) and isinstance(s.get("key"), str)
                                                          for s in image.steps) and image.name == name
    except (TypeError, ValueError):
        steps_ok = False
    if not steps_ok or not isinstance(image.artifacts, dict):
        raise RemoteRefused(f"refused image {name} from {where}: not a valid image record; nothing was cached")
    pulled, made = 0, set()
    for step in image.steps:
        record = store.get_record(step["key"])
        if record is None or not store.record_valid(record):
            record = pull_action(client, store, step["key"], trusted)
            if record is None:
                raise CacheError(f"{where} has image {name} but not its step {step['step']} ({step['key'][:12]}); "
                                 f"push it again")
            pulled += 1
        made |= set(record.outputs.values())
    if not set(image.artifacts.values()) <= made:
        raise RemoteRefused(f"refused image {name} from {where}: its artifacts are not what its records made")
    try:
        mine = images.load(store, name)
    except images.ImageError:
        mine = None
    kept_local = mine is not None and asdict(mine) != asdict(image)
    if mine is None:
        images.save(store, image)
    return {"image": name, "records_pulled": pulled, "records": len(image.steps), "kept_local": kept_local}
