"""`banger image ...`: the named images `banger build` made."""
from __future__ import annotations

import time
from pathlib import Path

import typer

from banger.cli.common import dirs, emit, fail, store, typer_app

image_app = typer_app(no_args_is_help=True, help="Named images built by `banger build`.")


@image_app.command("list")
def image_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Name, ref, digest, rootfs size, built at."""
    from banger.core.images import scan
    from banger.core.progress import human_bytes

    s = store()
    good, damaged = scan(s)
    rows = [{"name": i.name, "ref": i.ref, "digest": i.digest, "rootfs_size": i.rootfs_size,
             "built_at": i.built_at} for i in good]
    lines = [f"{r['name']:<24} {r['ref']:<40} {r['digest'][:19]}  {human_bytes(r['rootfs_size']):>10}  "
             f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(r['built_at']))}" for r in rows]
    lines += [f"{d.name:<24} DAMAGED ({d.why}): build it again with name={d.name} or `banger image rm {d.name}`"
              for d in damaged]
    emit(rows + [{"name": d.name, "damaged": str(d)} for d in damaged], as_json, lines)


@image_app.command("show")
def image_show(name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Everything `banger build --json` printed for this image's last build."""
    from banger.app.build import summary_lines
    from banger.core.images import ImageError, load

    s = store()
    try:
        record = load(s, name)
    except ImageError as exc:
        fail(str(exc))
    emit(record.to_json(s), as_json, summary_lines(record, s))


@image_app.command("history")
def image_history(name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """The image's last builds: when, from which manifest, which steps ran and how long each took."""
    from banger.app.build import history_lines
    from banger.core.images import ImageError, load

    try:
        record = load(store(), name)
    except ImageError as exc:
        fail(str(exc))
    emit({"image": record.name, "built_at": record.built_at, "builds": record.history()}, as_json,
         history_lines(record))


@image_app.command("rm")
def image_rm(name: str) -> None:
    """Drop the name; `banger cache gc` then reclaims what nothing else references."""
    from banger.core.images import ImageError, remove

    try:
        remove(store(), name)
    except ImageError as exc:
        fail(str(exc))
    typer.echo(f"removed image {name} (run `banger cache gc` to reclaim space)")


@image_app.command("export")
def image_export(name: str, dest: Path = typer.Argument(..., metavar="DIR"),
                 force: bool = typer.Option(False, "--force", help="Overwrite files DIR already holds."),
                 as_json: bool = typer.Option(False, "--json", help="Print {file: path} as JSON.")) -> None:
    """Copy the image's boot files into DIR (rootfs.ext4, bzImage, vmlinux, initrd.img, cmdline,
    run-qemu.sh): your own copies to boot with QEMU; writing to them never touches the cache."""
    from banger.app.export import ExportError, boot_settings, export_files, summary_lines
    from banger.core.images import ImageError

    try:
        from banger.rootfs.sshkey import ensure_key

        written = export_files(store(), name, dest, force, boot=boot_settings(dirs()),
                               ssh_key=ensure_key(dirs().state).public_line)
    except (ImageError, ExportError) as exc:
        fail(str(exc))
    emit({f: str(p) for f, p in written.items()}, as_json, summary_lines(written, dirs()))
