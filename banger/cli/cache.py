"""`banger cache ...`: list, size, verify, gc, export and import the artifact cache."""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from banger.cli.common import dirs, emit, fail, say, store, typer_app

cache_app = typer_app(no_args_is_help=True, help="Inspect and manage the artifact cache.")


@cache_app.command("ls")
def cache_ls(as_json: bool = typer.Option(False, "--json"),
             remote: Optional[str] = typer.Option(None, "--remote", metavar="REGISTRY/REPO",
                                                  help="List what a registry repository holds instead.")) -> None:
    """List every artifact: digest, size, last use, referenced by a named image or not."""
    from banger.app.cache import entries
    from banger.core.progress import human_bytes

    if remote:
        from banger.app.cache import CacheError
        from banger.app.cache_remote_ops import remote_listing
        from banger.core.errors import BuildError

        try:
            listing = remote_listing(dirs(), remote)
        except (CacheError, BuildError) as exc:
            fail(f"cannot list {remote}: {exc}")
        emit(listing, as_json, [f"{remote}: {listing['actions']} actions; images: {', '.join(listing['images']) or '-'}"])
        return

    rows = entries(store())
    emit([e.__dict__ for e in rows], as_json,
         [f"{e.digest[:30]:<30}  {human_bytes(e.size):>10}  {time.strftime('%Y-%m-%d %H:%M', time.localtime(e.last_used))}"
          f"  {'image' if e.referenced else '-'}" for e in rows])


@cache_app.command("du")
def cache_du(as_json: bool = typer.Option(False, "--json")) -> None:
    """Total size of the cache, how much of it named images keep, and the RAM it holds."""
    from banger.app.cache import usage
    from banger.core.progress import human_bytes

    u = usage(store())
    ram = f"; {human_bytes(u['ram'])} in RAM at {u['ram_path']}" if u["ram_path"] else ""
    kinds = ", ".join(f"{k} {human_bytes(n)}" for k, n in u["kinds"].items() if n)
    emit(u, as_json, [f"{human_bytes(u['total'])} in {u['artifacts']} artifacts ({human_bytes(u['referenced'])} kept by "
                      f"named images) at {u['path']}{ram}"] + ([f"by kind: {kinds}"] if kinds else []))


@cache_app.command("verify")
def cache_verify(as_json: bool = typer.Option(False, "--json")) -> None:
    """Rehash every artifact and check every record against its outputs' provenance; what is
    corrupt or inconsistent is removed so the next build remakes it."""
    from banger.app.cache import verify_all, verify_records

    good, bad = verify_all(store())
    records = verify_records(store())
    emit({"ok": len(good), "corrupt": bad, "records_removed": records}, as_json,
         [f"{len(good)} artifacts ok"] + [f"corrupt (removed): {d}" for d in bad] + records)
    if bad or records:
        raise typer.Exit(1)


@cache_app.command("gc")
def cache_gc(max_size: Optional[str] = typer.Option(None, "--max-size", help="e.g. 20G"),
             max_age: Optional[float] = typer.Option(None, "--max-age", help="days"),
             wait: float = typer.Option(600.0, "--wait", metavar="SECONDS",
                                        help="How long to wait for running builds (0: refuse at once)."),
             as_json: bool = typer.Option(False, "--json")) -> None:
    """Evict what no named image references (older than --max-age, then LRU down to --max-size).
    Waits for running builds first: what they made is referenced by no image yet."""
    from banger.app.cache import CacheError, gc
    from banger.core.progress import human_bytes
    from banger.engine.spec import SpecError, parse_size

    try:
        limit = parse_size(max_size) if max_size else None
    except SpecError as exc:
        fail(str(exc).replace("size=", "--max-size "))

    def waiting(builds: int) -> None:
        n = f"{builds} running build{'s' if builds != 1 else ''}" if builds else "running builds"
        say(f"waiting for {n} to finish (up to {wait:g} s; --wait SECONDS changes that)")

    try:
        result = gc(store(), limit, max_age, wait=wait, on_wait=waiting)
    except CacheError as exc:
        fail(str(exc))
    lines = [f"evicted {result['evicted']} artifacts, freed {human_bytes(result['freed'])}; "
             f"cache is {human_bytes(result['size'])}"]
    if result["over_limit"]:
        lines.append("still over --max-size: named images alone need more (`banger image rm` some)")
    if result["damaged_records"]:
        n = len(result["damaged_records"])
        lines.append(f"removed {n} damaged action record{'s' if n != 1 else ''} (their steps run again "
                     "at the next build)")
    emit(result, as_json, lines)


@cache_app.command("export")
def cache_export(file: Path, image: str = typer.Option(..., "--image", help="named image to export"),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """Write one image's artifacts and records to FILE (.tar.zst) for `cache import` elsewhere."""
    from banger.app.cache import CacheError
    from banger.app.cache_archive import export_image
    from banger.core.images import ImageError

    try:
        result = export_image(store(), image, file)
    except (CacheError, ImageError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write {exc.filename or file}: {exc.strerror or exc}")
    emit(result, as_json, [f"exported {image}: {result['artifacts']} artifacts, {result['records']} records -> {file}"])


@cache_app.command("import")
def cache_import(file: Path, as_json: bool = typer.Option(False, "--json")) -> None:
    """Load an export made by `cache export`; everything is re-verified before it is used, and
    local records and images are never replaced (BANGER_IMPORT_MAX_BYTES caps its size, 64G)."""
    from banger.app.cache import CacheError
    from banger.app.cache_archive import import_file

    if not file.is_file():
        fail(f"{file}: no such file; give the path of a `banger cache export` archive")
    try:
        result = import_file(store(), file)
    except (CacheError, OSError, ValueError) as exc:
        fail(f"import of {file} failed: {exc}")
    lines = [f"imported {result['artifacts']} artifacts, {result['records']} records, "
             f"images: {', '.join(result['images']) or '-'}"]
    lines += [f"kept the local record {k}: the archive's differs" for k in result["kept_local"]]
    lines += [f"kept the local image {n}: the archive's differs" for n in result["images_kept_local"]]
    lines += [f"refused record {r}" if not r.startswith("image ") else f"refused {r}" for r in result["refused"]]
    emit(result, as_json, lines)


@cache_app.command("push")
def cache_push(target: str = typer.Argument(..., metavar="REGISTRY/REPO"),
               image: Optional[List[str]] = typer.Option(None, "--image", help="named image to push (repeatable)"),
               all_images: bool = typer.Option(False, "--all", help="push every named image"),
               as_json: bool = typer.Option(False, "--json")) -> None:
    """Push images' action records and outputs to an OCI registry, one artifact per action;
    what the registry already has is not sent again."""
    from banger.app.cache import CacheError
    from banger.app.cache_remote_ops import push_images
    from banger.core.errors import BuildError
    from banger.core.images import ImageError
    from banger.core.progress import human_bytes

    if bool(image) == all_images:
        fail("name what to push: --image NAME (repeatable) or --all")
    try:
        stats = push_images(dirs(), target, None if all_images else list(image or []))
    except (CacheError, ImageError, BuildError) as exc:
        fail(f"push to {target} failed: {exc}")
    emit(stats.__dict__, as_json,
         [f"pushed {', '.join(stats.images)} to {target}: {stats.actions_sent} actions sent, "
          f"{stats.actions_present} already there; {stats.blobs_sent} blobs ({human_bytes(stats.bytes_sent)}) sent, "
          f"{stats.blobs_present} already there" + (f", {stats.blobs_mounted} mounted from another repository"
                                                     if stats.blobs_mounted else "")])


@cache_app.command("pull")
def cache_pull(target: str = typer.Argument(..., metavar="REGISTRY/REPO"),
               image: str = typer.Option(..., "--image", help="named image to pull"),
               as_json: bool = typer.Option(False, "--json")) -> None:
    """Pull an image's action records, outputs and image record from an OCI registry; every
    record and output is verified before it is cached."""
    from banger.app.cache import CacheError
    from banger.app.cache_remote_ops import pull_images
    from banger.core.errors import BuildError

    try:
        result = pull_images(dirs(), target, image)
    except (CacheError, BuildError) as exc:
        fail(f"pull from {target} failed: {exc}")
    lines = [f"pulled {image} from {target}: {result['records_pulled']} of {result['records']} records fetched"]
    if result["kept_local"]:
        lines.append(f"kept the local image {image}: the registry's differs")
    emit(result, as_json, lines)


@cache_app.command("keygen")
def cache_keygen() -> None:
    """Make the ed25519 key that signs what `cache push` and --cache-to write; prints the public
    key to put in `trusted_keys` in the config of those who pull."""
    from banger.app.cache import CacheError
    from banger.app.cache_signing import key_path, keygen

    try:
        public = keygen(dirs())
    except CacheError as exc:
        fail(str(exc))
    say(f"signing key written to {key_path(dirs())}; trust it with this line in trusted_keys:")
    typer.echo(public)
