"""What every command group shares: the global options, one-line errors, JSON or lines."""
from __future__ import annotations

import json

import click
import typer
from typer.core import TyperGroup

from banger.core.config import Dirs, default_dirs

state: dict = {}  # the root callback's options (--cache-dir)


class Group(TyperGroup):
    """A command group whose "No such command" error suggests the close matches once.

    Click's NoSuchCommand appends "Did you mean 'build'?" when it is printed (format_message, seen
    in click 8.4), and typer's TyperGroup.resolve_command also writes that suggestion into the
    message (typer 0.20): `banger biuld` said it twice. Click's is kept; typer's is used only with a
    click whose error carries no suggestions of its own.
    """

    def resolve_command(self, ctx: click.Context, args: list[str]):
        try:
            return click.Group.resolve_command(self, ctx, args)
        except click.UsageError as exc:
            if getattr(exc, "possibilities", None):  # click prints its own "Did you mean"
                raise
        return super().resolve_command(ctx, args)  # fails again, with typer's suggestion (if any)


def typer_app(**options) -> typer.Typer:
    """A typer app (root or command group) built on Group."""
    return typer.Typer(cls=Group, **options)


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def say(message: str) -> None:
    typer.echo(message, err=True)


def dirs() -> Dirs:
    """The dirs of this command; a cache dir that is not banger's is refused here, in one line,
    before any command reads or writes in it (Store makes a new or empty one a cache)."""
    from banger.core.cachedir import NotACacheError, check

    d = default_dirs(state.get("cache_dir"))
    try:
        check(d.cache)
    except NotACacheError as exc:
        fail(str(exc))
    return d


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
