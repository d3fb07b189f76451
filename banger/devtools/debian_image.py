"""The embedded default image: a real Debian rootfs made into an OCI image, for `banger demo`,
the test-suite and the benchmarks.

    debootstrap (root, cached) -> deterministic layer tar -> OCI layout -> local registry

The Debian mirror comes from the host's apt configuration at run time; no mirror host is
written here. The image is a plain systemd Debian like a stock cloud image; everything
banger-specific (SSH key, network bootstrap, guest agent) is added later by the inject step.
"""
from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import requests

from banger.devtools import registry as devregistry, oci_writer
from banger.core.fsutil import remove_tree
from banger.devtools.debootstrap import (DEFAULT_INCLUDE, DEFAULT_SUITE, DevImageError, Log, debootstrap_rootfs,
                                         say, unmount_under)
from banger.devtools.layer_tar import rootfs_to_layer_tar

# Bump when the recipe below (packages, clean-up, tar format) changes: cached images rebuild.
RECIPE_VERSION = "2"
DEMO_REPO = "debian"


# ---- OCI layout -------------------------------------------------------------------------------
def recipe_key(suite: str, include: tuple[str, ...], arch: str, slim: bool = True) -> str:
    recipe = {"recipe": RECIPE_VERSION, "suite": suite, "include": sorted(include), "arch": arch}
    if not slim:
        recipe["slim"] = False
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _dpkg_arch() -> str:
    try:
        return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def cached_rootfs_tar(cache_dir: Path, suite: str = DEFAULT_SUITE, include: tuple[str, ...] = DEFAULT_INCLUDE,
                      slim: bool = True, log: Log = say) -> tuple[Path, dict]:
    """The layer tar of the Debian rootfs, built once per (recipe version, suite, packages, arch, slim)."""
    arch = _dpkg_arch()
    key = recipe_key(suite, include, arch, slim)
    tar_path = cache_dir / f"debian-{suite}-{key}.tar"
    info_path = cache_dir / f"debian-{suite}-{key}.json"
    if tar_path.exists() and info_path.exists():
        return tar_path, json.loads(info_path.read_text())
    cache_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix="staging-", dir=cache_dir))
    try:
        rootfs = stage / "rootfs"
        started = time.monotonic()
        epoch = debootstrap_rootfs(rootfs, suite, include, debs_cache=cache_dir / "debs",
                                   logfile=cache_dir / "debootstrap.log", slim=slim, log=log)
        debootstrap_seconds = time.monotonic() - started
        log("writing the rootfs as a deterministic layer tar")
        started = time.monotonic()
        stats = rootfs_to_layer_tar(rootfs, stage / "layer.tar", epoch)
        info = {"suite": suite, "include": list(include), "arch": arch, "recipe": RECIPE_VERSION,
                "slim": slim,
                "source_date_epoch": epoch, "debootstrap_seconds": round(debootstrap_seconds, 1),
                "tar_seconds": round(time.monotonic() - started, 1), **asdict(stats)}
        os.replace(stage / "layer.tar", tar_path)
        info_path.write_text(json.dumps(info, indent=1) + "\n")
        _drop_outdated_recipes(cache_dir)
        log(f"rootfs: {stats.entries} entries, {stats.content_bytes / 1e6:.0f} MB "
            f"(debootstrap {debootstrap_seconds:.0f} s)")
        return tar_path, info
    finally:
        unmount_under(stage)
        remove_tree(stage)


def _drop_outdated_recipes(cache_dir: Path) -> None:
    """Remove cached rootfs tars made by an older RECIPE_VERSION (they can never be used again)."""
    for info_path in cache_dir.glob("debian-*.json"):
        try:
            outdated = json.loads(info_path.read_text()).get("recipe") != RECIPE_VERSION
        except (OSError, json.JSONDecodeError):
            continue
        if outdated:
            info_path.with_suffix(".tar").unlink(missing_ok=True)
            info_path.unlink(missing_ok=True)


def _tagged_manifest(layout: Path, tag: str) -> dict | None:
    try:
        index = json.loads((layout / "index.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    for desc in index.get("manifests", []):
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return desc
    return None


def _open_lock(path: Path):
    try:
        return open(path, "a")
    except PermissionError:  # a cache made by root, read by an unprivileged run: flock works on "r"
        return open(path, "r")


def build_debian_layout(layout_dir: Path, tag: str, cache_dir: Path, suite: str = DEFAULT_SUITE,
                        include: tuple[str, ...] = DEFAULT_INCLUDE, slim: bool = True, log: Log = say) -> dict:
    """An OCI layout at `layout_dir` whose `tag` is the Debian image; returns its manifest descriptor.

    Reuses `layout_dir` when it was built from the same recipe, else rebuilds it (debootstrap only
    when the cached rootfs tar for this recipe is missing). Safe against concurrent callers.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    layout_dir = Path(layout_dir)
    key = recipe_key(suite, include, _dpkg_arch(), slim)
    stamp_path = layout_dir / "banger-devimage.json"
    with _open_lock(cache_dir / "devimage.lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            stamp = json.loads(stamp_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            stamp = {}
        desc = _tagged_manifest(layout_dir, tag)
        if stamp.get("key") == key and desc is not None and desc["digest"] == stamp.get("manifest"):
            return desc
        tar_path, info = cached_rootfs_tar(cache_dir, suite, include, slim, log)
        log(f"writing OCI layout {layout_dir.name}:{tag} (gzip layer)")
        layout_dir.parent.mkdir(parents=True, exist_ok=True)
        new = Path(tempfile.mkdtemp(prefix=f".{layout_dir.name}-", dir=layout_dir.parent))
        try:
            os.chmod(new, 0o755)  # mkdtemp makes it private; the layout is read by unprivileged runs
            config = oci_writer.ImageConfig(architecture=info["arch"], cmd=["/bin/bash"])
            desc = oci_writer.write_image(new, [oci_writer.Layer(tar_path, "gzip")], config)
            oci_writer.write_index(new, tag, [desc])
            (new / "banger-devimage.json").write_text(json.dumps({"key": key, "manifest": desc["digest"]}))
            old = layout_dir.with_name(f".{layout_dir.name}.old")
            remove_tree(old)
            if layout_dir.exists():
                os.rename(layout_dir, old)
            os.rename(new, layout_dir)
            remove_tree(old)
        finally:
            remove_tree(new)
        return _tagged_manifest(layout_dir, tag) or desc


GIT_FILES = ("usr/bin/git", "usr/lib/git-core", "usr/share/git-core")  # the host's git (no other deps)


def _add_blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    if not path.exists():  # one there already holds these bytes (maybe a link into the source)
        _replace(path, data)
    return f"sha256:{digest}"


def _replace(path: Path, data: bytes) -> None:
    """Write a new file in place of `path`: never through it (with_host_files' copy is made of
    hard links to the source layout's files, which must not change)."""
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def with_host_files(layout: Path, dest: Path, files: tuple[str, ...] = GIT_FILES) -> Path:
    """A copy of `layout` (hard links) at `dest` whose image has one more layer: the host's
    `files` (paths relative to /). With the default, an image with git, taken from a host of the
    same Debian release as the image."""
    shutil.copytree(layout, dest, copy_function=os.link)
    index = json.loads((dest / "index.json").read_text())
    desc = index["manifests"][0]
    manifest = json.loads((dest / "blobs" / "sha256" / desc["digest"].split(":")[1]).read_text())
    config = json.loads((dest / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]).read_text())
    raw_file = dest.parent / f".{dest.name}-layer.tar"
    try:
        with tarfile.open(raw_file, "w", format=tarfile.PAX_FORMAT) as tar:
            for name in files:
                tar.add(f"/{name}", arcname=name)
        raw = raw_file.read_bytes()
    finally:
        raw_file.unlink(missing_ok=True)
    layer = gzip.compress(raw, compresslevel=1, mtime=0)
    config["rootfs"]["diff_ids"].append("sha256:" + hashlib.sha256(raw).hexdigest())
    config_bytes = json.dumps(config).encode()
    manifest["config"] = {**manifest["config"], "digest": _add_blob(dest, config_bytes), "size": len(config_bytes)}
    manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                               "digest": _add_blob(dest, layer), "size": len(layer)})
    manifest_bytes = json.dumps(manifest).encode()
    index["manifests"] = [{**desc, "digest": _add_blob(dest, manifest_bytes), "size": len(manifest_bytes)}]
    _replace(dest / "index.json", json.dumps(index).encode())
    (dest / "banger-devimage.json").unlink(missing_ok=True)  # no longer the recipe's image
    return dest


# ---- registry ---------------------------------------------------------------------------------
def push(layout: Path, tag: str, registry_host: str, repo: str) -> str:
    """Copy `layout:tag` to `registry_host/repo:tag` (plain HTTP); returns the pushed reference."""
    if shutil.which("skopeo") is None:
        raise DevImageError("skopeo not found; run: apt-get install skopeo")
    ref = f"{registry_host}/{repo}:{tag}"
    out = subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                          f"oci:{layout}:{tag}", f"docker://{ref}"], capture_output=True, text=True)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise DevImageError(f"pushing {layout.name}:{tag} to {ref} failed: {last}")
    return ref


def registry_digest(registry_host: str, repo: str, tag: str) -> str | None:
    """The manifest digest `repo:tag` has in a plain-HTTP registry, or None if it has none."""
    accept = ", ".join([oci_writer.MT_MANIFEST, oci_writer.MT_INDEX,
                        "application/vnd.docker.distribution.manifest.v2+json"])
    r = requests.head(f"http://{registry_host}/v2/{repo}/manifests/{tag}", headers={"Accept": accept},
                      timeout=10)
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return r.headers.get("Docker-Content-Digest")


def _port_is_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        # as a Go server binds: a TIME_WAIT left by the previous run does not make it busy
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ensure_demo_image(cache_dir: Path, slim: bool = True,
                      log: Log = say) -> tuple[devregistry.LocalRegistry, str]:
    """Start the demo registry (storage and port kept under `cache_dir`) holding the Debian image.

    Returns (registry, "127.0.0.1:PORT/debian:bookworm"); the caller stops the registry.
    The port is kept between runs when it is free, so the reference usually stays the same.
    First run: debootstrap (root, ~1.5 min) + push; later runs: registry start only.
    `slim=False` keeps docs, manual pages and translations (a W1-sized image, for benchmarks).
    """
    cache_dir = Path(cache_dir)
    layout = cache_dir / ("debian-oci" if slim else "debian-full-oci")
    desc = build_debian_layout(layout, DEFAULT_SUITE, cache_dir / "debian-src", slim=slim, log=log)
    reg_root = cache_dir / "registry"
    port_file = reg_root / "port"
    port = None
    if port_file.exists() and port_file.read_text().strip().isdigit():
        port = int(port_file.read_text())
        if not _port_is_free(port):
            port = None
    registry = devregistry.start(reg_root, port=port)
    try:
        port_file.write_text(registry.host.rsplit(":", 1)[1] + "\n")
        log(f"local registry: {registry.url} (storage {reg_root})")
        repo = DEMO_REPO if slim else f"{DEMO_REPO}-full"
        ref = f"{registry.host}/{repo}:{DEFAULT_SUITE}"
        if registry_digest(registry.host, repo, DEFAULT_SUITE) != desc["digest"]:
            log(f"pushing the Debian image to {ref}")
            push(layout, DEFAULT_SUITE, registry.host, repo)
        log(f"image ready: {ref} ({desc['digest'][:19]})")
        return registry, ref
    except BaseException:
        registry.stop()
        raise
