"""`banger build`: run the pipeline on `key=value` words, or --explain / --check it."""
from __future__ import annotations

from typing import List

import typer

from banger.cli.common import dirs, emit, fail, store


def build(words: List[str] = typer.Argument(..., metavar="image=REF [name=N] [kernel=K] [size=S] [platform=P] [boot=no] [hypervisor=H]",
                                            help="doit-style key=value words."),
          explain: bool = typer.Option(False, "--explain", help="Only say, per step, cached or will-run and why."),
          as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
          check: bool = typer.Option(False, "--check", help="Rebuild the cached image and report any byte difference."),
          cache_from: List[str] = typer.Option([], "--cache-from", metavar="REGISTRY/REPO",
                                               help="Consult this registry on a local miss (repeatable)."),
          cache_to: str = typer.Option(None, "--cache-to", metavar="REGISTRY/REPO",
                                       help="Push the image's records and outputs here after the build.")) -> None:
    """Build (and boot-check) an image: fetch, flatten, ext4, ownership, inject, stage kernel, boot."""
    from banger.app.build import explain as explain_build, run_build, summary_lines
    from banger.core.errors import BuildError
    from banger.engine.spec import SpecError, parse_words

    try:
        spec = parse_words(words)
        if explain:
            steps = explain_build(spec, dirs())
            emit({"steps": steps}, as_json, [f"{s['step']:<22} {s['status']:<9} {s['why']}" for s in steps])
            return
        if check:
            from banger.app.check import check_reproducible

            result = check_reproducible(spec, dirs())
            emit(result, as_json, result["lines"])
            if not result["identical"]:
                raise typer.Exit(1)
            return
        record = run_build(spec, dirs(), log=lambda m: typer.echo(m, err=True), cache_from=cache_from,
                           cache_to=cache_to)
    except (BuildError, SpecError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted; rerun the same command to continue where it stopped")
    s = store()
    emit(record.to_json(s), as_json, summary_lines(record, s))
