"""What `banger cache push/pull/ls --remote` and a build's `--cache-from/--cache-to` call, on top
of cache_remote.py (one action or image in a registry): registries from the arguments and the
config (`cache_from`, `insecure_registries`, `trusted_keys`), the signing key, and the warnings
that keep a build going when a registry cannot help.
"""
from __future__ import annotations

from typing import Sequence

from banger.app import cache_signing as signing
from banger.app.cache import CacheError
from banger.app.cache_remote import (PushStats, RemoteRefused, client_for, pull_action, pull_image,
                                     push_image)
from banger.core import images
from banger.core.errors import BuildError
from banger.core.store import ActionRecord, Store
from banger.oci import registry_push as push
from banger.oci.registry import RegistryClient


# ---- what `banger cache push/pull` call ------------------------------------------------------------
def insecure_of(dirs) -> list[str]:
    from banger.core.config import load_config

    value = load_config(dirs).get("insecure_registries", [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CacheError('insecure_registries in banger\'s config must be a list of "host[:port]" strings')
    return value


def push_images(dirs, target: str, names: list[str] | None) -> PushStats:
    """Push the named images (None: every named image) with their records and outputs. Blobs are
    mounted, where the registry can, from the repositories this cache pushed to before."""
    store = Store(dirs.cache, dirs.trees)
    client = client_for(target, insecure_of(dirs))
    wanted = names if names is not None else [i.name for i in images.all_images(store)]
    if not wanted:
        raise CacheError("there is no named image to push; build one first")
    stats, signer = PushStats(), signing.load_signer(dirs)
    earlier = pushed_repositories(store, client.registry)
    for name in wanted:
        push_image(client, store, name, stats, signer, mount_from=earlier)
    remember_push(store, client.registry, client.repository)
    return stats


PUSHED_FILE = "remote-repos.json"  # in the cache dir: {registry: [repositories pushed to, latest first]}
PUSHED_KEPT = 8


def pushed_repositories(store: Store, registry: str) -> list[str]:
    """The repositories of `registry` this cache pushed to, latest first ([] if it never did, or
    the file is not what banger writes)."""
    import json

    try:
        doc = json.loads((store.root / PUSHED_FILE).read_text())
        repos = doc.get(registry, []) if isinstance(doc, dict) else []
    except (OSError, ValueError):
        return []
    return [r for r in repos if isinstance(r, str)] if isinstance(repos, list) else []


def remember_push(store: Store, registry: str, repository: str) -> None:
    """Note a push (best effort: a lost note only costs the next push a mount)."""
    import json

    from banger.core.fsutil import atomic_write

    path = store.root / PUSHED_FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    repos = [repository, *(r for r in pushed_repositories(store, registry) if r != repository)][:PUSHED_KEPT]
    doc[registry] = repos
    try:
        atomic_write(path, json.dumps(doc, indent=1, sort_keys=True).encode())
    except OSError:
        pass


def pull_images(dirs, target: str, name: str) -> dict:
    """Pull one image's records, outputs and image record (held like a build against `cache gc`)."""
    from banger.core import inflight
    from banger.core.config import load_config

    store = Store(dirs.cache, dirs.trees)
    client = client_for(target, insecure_of(dirs))
    trusted = signing.trusted_keys(load_config(dirs))
    with inflight.building(store.root):
        return pull_image(client, store, name, trusted)


# ---- a build's --cache-from / --cache-to ------------------------------------------------------------
class RemoteLookup:
    """Build.remote: on a local miss, ask each --cache-from registry in turn. A registry that is
    down or refuses banger is warned about once and not asked again in this build; a refused
    entry is warned about and the step runs locally."""

    def __init__(self, store: Store, clients: list[RegistryClient], log, trusted: Sequence[str] = ()):
        self.store, self.clients, self.log, self.trusted = store, clients, log, list(trusted)
        self.asked: set[str] = set()  # asked once in this build (doit's check, then the run)

    def __call__(self, key: str) -> ActionRecord | None:
        if key in self.asked:
            return None
        self.asked.add(key)
        for client in list(self.clients):
            where = f"{client.registry}/{client.repository}"
            try:
                record = pull_action(client, self.store, key, self.trusted)
            except RemoteRefused as exc:
                self.log(f"warning: {exc}; the step runs locally")
                continue
            except (BuildError, CacheError, OSError) as exc:
                self.log(f"warning: cache {where} is not usable ({exc}); building locally")
                self.clients.remove(client)
                continue
            if record is not None:
                self.log(f"{record.step}: pulled from {where}")
                return record
        return None


def attach(build, dirs, cache_from: Sequence[str]) -> None:
    """Point the build's remote lookup at `cache_from` and the config's `cache_from` list."""
    from banger.core.config import load_config

    config = load_config(dirs)
    configured = config.get("cache_from", [])
    if not isinstance(configured, list) or not all(isinstance(v, str) for v in configured):
        raise BuildError('cache_from in banger\'s config must be a list of "REGISTRY/REPO" strings')
    targets = list(dict.fromkeys([*cache_from, *configured]))
    if not targets:
        return
    try:
        insecure = insecure_of(dirs)
        clients = [client_for(t, insecure) for t in targets]
        trusted = signing.trusted_keys(config)
    except CacheError as exc:
        raise BuildError(f"--cache-from: {exc}") from None
    for client in clients:
        client.actions = "pull"
    build.remote = RemoteLookup(build.store, clients, build.log, trusted)


def push_after_build(dirs, target: str, name: str, log) -> PushStats | None:
    """--cache-to: push the image just built; a failure is one warning line, not a failed build."""
    from banger.core.progress import human_bytes

    try:
        stats = push_images(dirs, target, [name])
    except (BuildError, CacheError, images.ImageError, OSError) as exc:
        log(f"warning: --cache-to {target}: {exc}; the image is built and cached locally only")
        return None
    log(f"pushed {name} to {target}: {stats.actions_sent} actions, {human_bytes(stats.bytes_sent)} sent")
    return stats


def remote_listing(dirs, target: str) -> dict:
    """`cache ls --remote`: the images a repository holds and how many actions."""
    client = client_for(target, insecure_of(dirs))
    client.actions = "pull"
    tags = push.list_tags(client)
    return {"repository": target,
            "images": sorted(t.removeprefix("image-") for t in tags if t.startswith("image-")),
            "actions": sum(1 for t in tags if t.startswith("action-"))}
