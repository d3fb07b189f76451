"""What the user asked to build: parsed from doit-style `key=value` words."""
from __future__ import annotations

import re
from dataclasses import dataclass, fields

KEYS = ("image", "name", "kernel", "size", "platform", "boot", "hypervisor", "snapshot")

from banger.core.images import NAME_RE


class SpecError(ValueError):
    pass


MAX_SIZE = 16 << 40  # the largest file ext4 (the usual home of the cache) holds with 4 KiB blocks


@dataclass(frozen=True)
class BuildSpec:
    image: str
    name: str | None = None
    kernel: str | None = None
    size: int | None = None  # bytes; None = content-aware
    platform: str | None = None  # "linux/amd64"; None = host
    boot: bool = True
    hypervisor: str = "auto"
    snapshot: bool = False  # also save a booted machine for `banger vm create` to restore


def parse_size(text: str) -> int:
    m = re.fullmatch(r"([0-9]+)([KMGT]?)(i?B)?", text.strip(), re.IGNORECASE | re.ASCII)
    if not m:
        raise SpecError(f"size={text!r} is not a size; use e.g. size=2G or size=512M")
    digits = m.group(1).lstrip("0") or "0"
    size = int(digits) * 1024 ** " KMGT".index((m.group(2) or " ").upper()) if len(digits) <= 20 else MAX_SIZE + 1
    if size > MAX_SIZE:
        shown = text if len(text) <= 24 else text[:20] + "..."
        raise SpecError(f"size={shown!r} is larger than banger supports; the largest is size={MAX_SIZE >> 40}T")
    if size == 0:
        raise SpecError(f"size={text!r} is empty; give the disk size, e.g. size=2G, or leave size= out "
                        "for a content-aware size")
    return size


def parse_words(words: list[str] | tuple[str, ...], command: str = "banger build") -> BuildSpec:
    """A BuildSpec from `key=value` words; `command` is how the user's front end spells a build
    (the CLI's `banger build`, dodo.py's `doit build`), for the error that names no image."""
    values: dict[str, object] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or key not in KEYS:
            raise SpecError(f"unknown build argument {word!r}; use key=value with key one of: {', '.join(KEYS)}")
        if not value:
            raise SpecError(f"{key}= needs a value")
        values[key] = value
    if "image" not in values:
        raise SpecError(f"no image given; use e.g. `{command} image=debian:bookworm`")
    if "size" in values:
        values["size"] = parse_size(str(values["size"]))
    for flag in ("boot", "snapshot"):
        if flag in values:
            text = str(values[flag]).lower()
            if text not in ("yes", "no", "true", "false", "1", "0"):
                raise SpecError(f"{flag}={values[flag]!r}; use {flag}=yes or {flag}=no")
            values[flag] = text in ("yes", "true", "1")
    if "hypervisor" in values and values["hypervisor"] not in ("auto", "qemu", "firecracker"):
        raise SpecError(f"hypervisor={values['hypervisor']!r}; use auto, qemu or firecracker")
    if "name" in values and not NAME_RE.fullmatch(str(values["name"])):
        raise SpecError(f"name={values['name']!r}: use lowercase letters, digits, '.', '_' and '-'")
    known = {f.name for f in fields(BuildSpec)}
    return BuildSpec(**{k: v for k, v in values.items() if k in known})
