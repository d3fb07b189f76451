"""`banger kernel ...`: list, show, rm, import, pull and build kernel bundles."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from banger.cli.common import dirs, emit, fail, say, typer_app
from banger.kernel.errors import KernelError

if TYPE_CHECKING:  # the kernel modules load when a kernel command runs, not at every CLI start
    from banger.kernel.bundle import Bundle

kernel_app = typer_app(no_args_is_help=True, help="Kernel bundles: list, show, import, pull, build, rm.")


def _summary(bundle: Bundle, default: str) -> dict:
    from banger.kernel.bundle import summary

    return summary(bundle, default)


@kernel_app.command("list")
def list_cmd(available: bool = typer.Option(False, "--available", help="Show the catalog's kernels too."),
             catalog: Optional[str] = typer.Option(None, "--catalog", help="Catalog FILE or URL."),
             as_json: bool = typer.Option(False, "--json")) -> None:
    """Installed kernel bundles (or, with --available, the catalog with pulled/available state)."""
    from banger.kernel import bundle as kernel_bundle
    from banger.kernel.catalog import available as catalog_rows, human_size

    d = dirs()
    try:
        if available:
            rows = catalog_rows(d, catalog)
            lines = [f"{r['name']:<24} {r['state']:<9} {str(r['version'] or '?'):<28} "
                     f"{human_size(r['size']):>10}  {r['source']}" for r in rows]
        else:
            default = kernel_bundle.default_name(d)
            rows = [_summary(b, default) for b in kernel_bundle.list_bundles(d)]
            lines = [f"{'*' if r['default'] else ' '} {r['name']:<24} {r['version']:<28} {r['arch']:<6} "
                     f"{human_size(r['size']):>10}  {r['role']:<8}  {r['source']}" for r in rows]
            if not rows:
                lines = ["no kernels installed; run `banger kernel pull debian:cloud-amd64`"]
    except KernelError as exc:
        fail(str(exc))
    emit(rows, as_json, lines)


@kernel_app.command("show")
def show_cmd(name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """A bundle's manifest: version, files and their sha256, source."""
    from banger.kernel import bundle as kernel_bundle

    d = dirs()
    try:
        bundle = kernel_bundle.load(d, name)
    except KernelError as exc:
        fail(str(exc))
    data = dict(_summary(bundle, kernel_bundle.default_name(d)), manifest=bundle.manifest.__dict__)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    m = bundle.manifest
    role = f"  ({data['role']})" if data["role"] else ""
    typer.echo(f"{m.name}{role}")
    for key in ("version", "arch", "distro", "source", "imported_at", "path"):
        typer.echo(f"  {key + ':':<13}{data[key]}")
    for fname, digest in sorted(m.files.items()):
        typer.echo(f"  {fname:<11}  {m.sizes.get(fname, 0):>11} B  {digest}")
    modules = m.info.get("initrd", {}).get("modules") if isinstance(m.info.get("initrd"), dict) else None
    if modules:
        typer.echo(f"  initrd loads: {' '.join(modules)}")


@kernel_app.command("rm")
def rm_cmd(name: str) -> None:
    """Remove a kernel bundle."""
    from banger.kernel import bundle as kernel_bundle

    try:
        kernel_bundle.remove(dirs(), name)
    except KernelError as exc:
        fail(str(exc))
    typer.echo(f"removed kernel {name}")


@kernel_app.command("import")
def import_cmd(name: str,
               from_dir: Optional[Path] = typer.Option(None, "--from", help="A directory with a kernel."),
               deb: Optional[Path] = typer.Option(None, "--deb", help="A Debian linux-image-*.deb."),
               force: bool = typer.Option(False, "--force", help="Replace an existing bundle.")) -> None:
    """Import a kernel bundle from a directory (metadata.json, boot/vmlinuz-*...) or a .deb."""
    from banger.kernel import sources

    if (from_dir is None) == (deb is None):
        fail("give exactly one of --from DIR or --deb FILE.deb")
    try:
        if deb is not None:
            from banger.kernel.debian import import_deb

            bundle = import_deb(dirs(), name, deb, force=force, log=say)
        else:
            bundle = sources.import_dir(dirs(), name, from_dir, force=force, log=say)
    except KernelError as exc:
        fail(str(exc))
    typer.echo(f"imported kernel {bundle.name} ({bundle.version}) at {bundle.path}")


@kernel_app.command("pull")
def pull_cmd(name: str = typer.Argument(..., help="A catalog name, or debian:<flavour> (e.g. debian:cloud-amd64)."),
             force: bool = typer.Option(False, "--force", help="Pull again, replacing the installed bundle."),
             catalog: Optional[str] = typer.Option(None, "--catalog", help="Catalog FILE or URL.")) -> None:
    """Download a kernel bundle from the catalog (or the host's Debian apt sources)."""
    from banger.kernel.catalog import pull

    try:
        result = pull(dirs(), name, catalog, force=force, log=say)
    except KernelError as exc:
        fail(str(exc))
    typer.echo(result.message())


@kernel_app.command("build")
def build_cmd(name: str = typer.Argument(..., help="The bundle's name, e.g. microvm."),
              source: str = typer.Option("debian:linux-source-6.1", "--source",
                                         help="debian:linux-source-X.Y, fetched with the host's apt."),
              config: str = typer.Option("microvm", "--config",
                                         help="microvm, or a fragment FILE merged over it."),
              jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="make -j (default: the CPUs)."),
              force: bool = typer.Option(False, "--force", help="Replace a bundle of that name not built here.")) -> None:
    """Compile a microVM kernel (no modules, no initramfs) as cached steps; it becomes the default."""
    from banger.app.kernel_build import build
    from banger.core.errors import BuildError

    try:
        bundle, installed = build(dirs(), name, source, config, jobs, force=force, log=say)
    except (KernelError, BuildError) as exc:
        fail(str(exc))
    what = "built" if installed else "up to date:"
    typer.echo(f"{what} kernel {bundle.name} ({bundle.version}) at {bundle.path}")
