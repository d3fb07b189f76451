"""What every command group shares: the global options, one-line errors, JSON or lines."""
from __future__ import annotations

import json

import typer

from banger.core.config import Dirs, default_dirs

state: dict = {}  # the root callback's options (--cache-dir)


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def say(message: str) -> None:
    typer.echo(message, err=True)


def dirs() -> Dirs:
    return default_dirs(state.get("cache_dir"))


def store():
    from banger.core.store import Store

    d = dirs()
    return Store(d.cache, d.trees)


def emit(value, as_json: bool, lines: list[str]) -> None:
    if as_json:
        typer.echo(json.dumps(value, indent=2))
    else:
        for line in lines:
            typer.echo(line)
