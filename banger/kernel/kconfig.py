"""Kernel config fragments: parse, merge, and check that a finished .config kept what was asked.

A fragment is Kconfig's own format: `CONFIG_X=value` lines and `# CONFIG_X is not set` lines
(= n); comments and blank lines are ignored. `banger kernel build` applies the built-in
`configs/microvm.config` (or it merged with a user's fragment, whose lines win) over
`make allnoconfig`, runs `make olddefconfig`, then `check` makes sure every option the fragment
asked for survived: Kconfig silently drops an option whose dependencies are not met.
"""
from __future__ import annotations

import hashlib
import re
from importlib import resources
from pathlib import Path

from banger.kernel.errors import KernelError

BUILTIN = {"microvm": "microvm.config"}
SET_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
UNSET_RE = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def parse(text: str, origin: str = "fragment") -> dict[str, str]:
    """{option: value} in file order ("n" for `is not set`); a malformed line raises naming it."""
    options: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if m := SET_RE.match(line):
            options[m.group(1)] = m.group(2)
        elif m := UNSET_RE.match(line):
            options[m.group(1)] = "n"
        elif line and not line.startswith("#"):
            raise KernelError(f"{origin} line {n}: {raw.strip()!r} is not `CONFIG_X=value` "
                              "or `# CONFIG_X is not set`")
    return options


def merge(*fragments: dict[str, str]) -> dict[str, str]:
    """Later fragments win, option by option."""
    merged: dict[str, str] = {}
    for fragment in fragments:
        merged.update(fragment)
    return merged


def render(options: dict[str, str]) -> str:
    return "".join(f"# {k} is not set\n" if v == "n" else f"{k}={v}\n" for k, v in options.items())


def builtin_text(name: str) -> str:
    return resources.files("banger.kernel").joinpath("configs", BUILTIN[name]).read_text()


def load(choice: str) -> tuple[dict[str, str], str]:
    """The fragment for --config: "microvm" (built in) or a FILE merged over it; and its label."""
    base = parse(builtin_text("microvm"), "microvm.config")
    if choice in BUILTIN:
        return merge(base, parse(builtin_text(choice), BUILTIN[choice])), choice
    path = Path(choice)
    try:
        text = path.read_text()
    except (FileNotFoundError, IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise KernelError(f"cannot read the config fragment {choice} ({exc.__class__.__name__}); "
                          f"give `microvm` or a readable fragment file") from None
    return merge(base, parse(text, str(path))), f"microvm+{path.name}"


def digest(options: dict[str, str]) -> str:
    return "sha256:" + hashlib.sha256(render(options).encode()).hexdigest()


def check(wanted: dict[str, str], dot_config: str) -> list[str]:
    """The options of `wanted` the finished .config does not have as asked ("CONFIG_X=y (got n)")."""
    got = parse("\n".join(line for line in dot_config.splitlines()
                          if SET_RE.match(line.strip()) or UNSET_RE.match(line.strip())), ".config")
    missing = []
    for option, value in wanted.items():
        actual = got.get(option, "n")
        if actual != value:
            missing.append(f"{option}={value} (got {actual})")
    return missing
