"""The `banger` command line: the root typer app, its global options and its command groups."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from banger.cli import build, misc, ui
from banger.cli.cache import cache_app
from banger.cli.common import state, typer_app
from banger.cli.image import image_app
from banger.cli.kernel import kernel_app
from banger.cli.vm import vm_app, vm_list

app = typer_app(no_args_is_help=True, add_completion=False,
                  help="Turn OCI images into bootable microVM disks and boot them.")
app.command(context_settings={"allow_extra_args": False})(build.build)
app.add_typer(cache_app, name="cache")
app.add_typer(image_app, name="image")
app.add_typer(kernel_app, name="kernel", help="Kernel bundles: list, show, import, pull, rm.")
app.add_typer(vm_app, name="vm")
app.command("ps", help="Alias of `banger vm list`.")(vm_list)
app.command()(misc.demo)
app.command()(misc.version)
app.command()(misc.doctor)
app.command()(ui.ui)


@app.callback()
def main_options(cache_dir: Optional[Path] = typer.Option(
        None, "--cache-dir", envvar="BANGER_CACHE_DIR",
        help="Artifact cache (default $XDG_CACHE_HOME/banger).")) -> None:
    state["cache_dir"] = cache_dir


def main() -> None:
    try:
        app()
    except BrokenPipeError:
        sys.exit(0)
