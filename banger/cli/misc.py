"""`banger demo`, `banger version`, `banger doctor`."""
from __future__ import annotations

import typer

from banger.cli.common import dirs, emit, fail, say, store


def demo(boot: bool = typer.Option(True, "--boot/--no-boot", help="Boot the image and probe it over SSH."),
         as_json: bool = typer.Option(False, "--json")) -> None:
    """Build and boot the embedded default: a local registry holding a Debian bookworm image made
    with debootstrap (first run needs root), and the Debian cloud kernel."""
    from banger.app.build import summary_lines
    from banger.app.demo import run_demo
    from banger.core.errors import BuildError

    try:
        record = run_demo(dirs(), boot, log=say)
    except BuildError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted; rerun `banger demo` to continue where it stopped")
    s = store()
    emit(record.to_json(s), as_json, summary_lines(record, s))


def version(as_json: bool = typer.Option(False, "--json")) -> None:
    """banger's version, git commit and build date."""
    from banger.buildinfo import info

    data = info()
    emit(data, as_json, [f"banger {data['version']} (commit {data['commit']}, built {data['build_date']})"])


def doctor(as_json: bool = typer.Option(False, "--json"),
           fix: bool = typer.Option(False, "--fix", help="Remove bridge leases, taps and NAT rules of VMs that are gone.")) -> None:
    """Which host tools are present or missing (required, then optional), and the fix for each.
    Exits 1 when a required one is missing."""
    from banger.app.doctor import checks, fix_network, healthy, lines

    if fix:
        removed = fix_network(dirs())
        say("doctor --fix: " + ("; ".join(removed) if removed else "nothing to remove"))
    rows = checks()
    emit([c.__dict__ for c in rows], as_json, lines(rows))
    if not healthy(rows):
        raise typer.Exit(1)
