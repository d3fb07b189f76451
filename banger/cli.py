"""The `banger` command line: parse, call, print."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from .config import default_dirs

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Turn OCI images into bootable microVM disks and boot them.")
cache_app = typer.Typer(no_args_is_help=True, help="Inspect and manage the artifact cache.")
image_app = typer.Typer(no_args_is_help=True, help="Named images built by `banger build`.")
app.add_typer(cache_app, name="cache")
app.add_typer(image_app, name="image")

_state: dict = {}


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def dirs():
    return default_dirs(_state.get("cache_dir"))


def store():
    from .store import Store

    d = dirs()
    return Store(d.cache, d.trees)


def emit(value, as_json: bool, lines: list[str]) -> None:
    if as_json:
        typer.echo(json.dumps(value, indent=2))
    else:
        for line in lines:
            typer.echo(line)


@app.callback()
def main_options(cache_dir: Optional[Path] = typer.Option(
        None, "--cache-dir", envvar="BANGER_CACHE_DIR",
        help="Artifact cache (default $XDG_CACHE_HOME/banger).")) -> None:
    _state["cache_dir"] = cache_dir


@app.command(context_settings={"allow_extra_args": False})
def build(words: List[str] = typer.Argument(..., metavar="image=REF [name=N] [kernel=K] [size=S] [platform=P] [boot=no] [hypervisor=H]",
                                            help="doit-style key=value words."),
          explain: bool = typer.Option(False, "--explain", help="Only say, per step, cached or will-run and why."),
          as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
          check: bool = typer.Option(False, "--check", help="Rebuild the cached image and report any byte difference.")) -> None:
    """Build (and boot-check) an image: fetch, flatten, ext4, ownership, inject, stage kernel, boot."""
    from .build import explain as explain_build, run_build, summary_lines
    from .engine import BuildError
    from .spec import SpecError, parse_words

    try:
        spec = parse_words(words)
        if explain:
            steps = explain_build(spec, dirs())
            emit({"steps": steps}, as_json, [f"{s['step']:<22} {s['status']:<9} {s['why']}" for s in steps])
            return
        if check:
            from .reproduce import check_reproducible

            result = check_reproducible(spec, dirs())
            emit(result, as_json, result["lines"])
            if not result["identical"]:
                raise typer.Exit(1)
            return
        record = run_build(spec, dirs(), log=lambda m: typer.echo(m, err=True))
    except (BuildError, SpecError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted; rerun the same command to continue where it stopped")
    s = store()
    emit(record.to_json(s), as_json, summary_lines(record, s))


# ---- cache ---------------------------------------------------------------------------------------
@cache_app.command("ls")
def cache_ls(as_json: bool = typer.Option(False, "--json")) -> None:
    """List every artifact: digest, size, last use, referenced by a named image or not."""
    from .cache_ops import entries
    from .progress import human_bytes

    rows = entries(store())
    emit([e.__dict__ for e in rows], as_json,
         [f"{e.digest[:30]:<30}  {human_bytes(e.size):>10}  {time.strftime('%Y-%m-%d %H:%M', time.localtime(e.last_used))}"
          f"  {'image' if e.referenced else '-'}" for e in rows])


@cache_app.command("du")
def cache_du(as_json: bool = typer.Option(False, "--json")) -> None:
    """Total size of the cache, and how much of it named images keep."""
    from .cache_ops import entries
    from .progress import human_bytes

    rows = entries(store())
    total = sum(e.size for e in rows)
    kept = sum(e.size for e in rows if e.referenced)
    emit({"total": total, "referenced": kept, "artifacts": len(rows), "path": str(dirs().cache)}, as_json,
         [f"{human_bytes(total)} in {len(rows)} artifacts ({human_bytes(kept)} kept by named images) at {dirs().cache}"])


@cache_app.command("verify")
def cache_verify(as_json: bool = typer.Option(False, "--json")) -> None:
    """Rehash every artifact; corrupt ones are removed so the next build remakes them."""
    from .cache_ops import verify_all

    good, bad = verify_all(store())
    emit({"ok": len(good), "corrupt": bad}, as_json,
         [f"{len(good)} artifacts ok"] + [f"corrupt (removed): {d}" for d in bad])
    if bad:
        raise typer.Exit(1)


@cache_app.command("gc")
def cache_gc(max_size: Optional[str] = typer.Option(None, "--max-size", help="e.g. 20G"),
             max_age: Optional[float] = typer.Option(None, "--max-age", help="days"),
             as_json: bool = typer.Option(False, "--json")) -> None:
    """Evict what no named image references (older than --max-age, then LRU down to --max-size)."""
    from .cache_ops import gc
    from .progress import human_bytes
    from .spec import SpecError, parse_size

    try:
        limit = parse_size(max_size) if max_size else None
    except SpecError as exc:
        fail(str(exc).replace("size=", "--max-size "))
    result = gc(store(), limit, max_age)
    lines = [f"evicted {result['evicted']} artifacts, freed {human_bytes(result['freed'])}; "
             f"cache is {human_bytes(result['size'])}"]
    if result["over_limit"]:
        lines.append("still over --max-size: named images alone need more (`banger image rm` some)")
    emit(result, as_json, lines)


@cache_app.command("export")
def cache_export(file: Path, image: str = typer.Option(..., "--image", help="named image to export"),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """Write one image's artifacts and records to FILE (.tar.zst) for `cache import` elsewhere."""
    from .cache_ops import CacheError, export_image
    from .images import ImageError

    try:
        result = export_image(store(), image, file)
    except (CacheError, ImageError) as exc:
        fail(str(exc))
    emit(result, as_json, [f"exported {image}: {result['artifacts']} artifacts, {result['records']} records -> {file}"])


@cache_app.command("import")
def cache_import(file: Path, as_json: bool = typer.Option(False, "--json")) -> None:
    """Load an export made by `cache export`; everything is re-verified before it is used."""
    from .cache_ops import CacheError, import_file

    if not file.is_file():
        fail(f"{file}: no such file; give the path of a `banger cache export` archive")
    try:
        result = import_file(store(), file)
    except (CacheError, OSError, ValueError) as exc:
        fail(f"import of {file} failed: {exc}")
    emit(result, as_json, [f"imported {result['artifacts']} artifacts, {result['records']} records, "
                           f"images: {', '.join(result['images']) or '-'}"])


# ---- images --------------------------------------------------------------------------------------
@image_app.command("list")
def image_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Name, ref, digest, rootfs size, built at."""
    from .images import all_images
    from .progress import human_bytes

    s = store()
    rows = [{"name": i.name, "ref": i.ref, "digest": i.digest, "rootfs_size": i.rootfs_size,
             "built_at": i.built_at} for i in all_images(s)]
    emit(rows, as_json, [f"{r['name']:<24} {r['ref']:<40} {r['digest'][:19]}  {human_bytes(r['rootfs_size']):>10}  "
                         f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(r['built_at']))}" for r in rows])


@image_app.command("show")
def image_show(name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Everything `banger build --json` printed for this image's last build."""
    from .build import summary_lines
    from .images import ImageError, load

    s = store()
    try:
        record = load(s, name)
    except ImageError as exc:
        fail(str(exc))
    emit(record.to_json(s), as_json, summary_lines(record, s))


@image_app.command("rm")
def image_rm(name: str) -> None:
    """Drop the name; `banger cache gc` then reclaims what nothing else references."""
    from .images import ImageError, remove

    try:
        remove(store(), name)
    except ImageError as exc:
        fail(str(exc))
    typer.echo(f"removed image {name} (run `banger cache gc` to reclaim space)")


# ---- the embedded default -----------------------------------------------------------------------
@app.command()
def demo(boot: bool = typer.Option(True, "--boot/--no-boot", help="Boot the image and probe it over SSH."),
         as_json: bool = typer.Option(False, "--json")) -> None:
    """Build and boot the embedded default: a local registry holding a Debian bookworm image made
    with debootstrap (first run needs root), and the Debian cloud kernel."""
    from .build import run_build, summary_lines
    from .devimage import ensure_demo_image
    from .engine import BuildError
    from .kernel_bundle import KernelError
    from .spec import parse_words
    from .stage_kernel import ensure_default_kernel

    say = lambda m: typer.echo(m, err=True)  # noqa: E731
    d = dirs()
    try:
        ensure_default_kernel(d, log=say)
        registry, ref = ensure_demo_image(d.cache / "demo", log=say)
    except (BuildError, KernelError, RuntimeError, OSError) as exc:
        fail(str(exc))
    try:
        say(f"banger build image={ref}" + ("" if boot else " boot=no"))
        record = run_build(parse_words([f"image={ref}", *([] if boot else ["boot=no"])]), d, log=say)
    except BuildError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted; rerun `banger demo` to continue where it stopped")
    finally:
        registry.stop()
    s = store()
    emit(record.to_json(s), as_json, summary_lines(record, s))


# ---- misc ----------------------------------------------------------------------------------------
@app.command()
def version(as_json: bool = typer.Option(False, "--json")) -> None:
    """banger's version, git commit and build date."""
    from .buildinfo import info

    data = info()
    emit(data, as_json, [f"banger {data['version']} (commit {data['commit']}, built {data['build_date']})"])


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json")) -> None:
    """Which host tools are present or missing, and the command that fixes each."""
    from .doctor import checks

    rows = checks()
    emit([c.__dict__ for c in rows], as_json,
         [f"{'ok ' if c.ok else 'MISSING'} {c.name:<20} {c.detail}" + (f"\n        fix: {c.fix}" if c.fix else "")
          for c in rows])


def _mount_optional() -> None:
    try:
        from .cli_kernel import kernel_app
    except ImportError:
        return
    app.add_typer(kernel_app, name="kernel", help="Kernel bundles: list, show, import, pull, rm.")


_mount_optional()


def main() -> None:
    try:
        app()
    except BrokenPipeError:
        sys.exit(0)
