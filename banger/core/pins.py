"""Pins: artifacts something outside the image records still needs (a VM's disk is a qcow2
overlay whose backing file is a cached rootfs). `<cache>/pins/<owner>.json` holds the digests
and the path of the owner's own record; `banger cache gc` keeps every pinned digest while that
record exists, and drops a pin whose owner is gone (a VM directory removed by hand).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from banger.core.fsutil import atomic_write

OWNER_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")


def _path(cache: Path, owner: str) -> Path:
    if not OWNER_RE.fullmatch(owner):
        raise ValueError(f"bad pin owner {owner!r}")
    return Path(cache) / "pins" / f"{owner}.json"


def pin(cache: Path, owner: str, digests: list[str], record: Path) -> None:
    path = _path(cache, owner)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"digests": sorted(set(digests)), "record": str(record)}, indent=1).encode())


def unpin(cache: Path, owner: str) -> None:
    _path(cache, owner).unlink(missing_ok=True)


def pinned(cache: Path) -> dict[str, set[str]]:
    """{owner: digests} of the pins whose owner still exists; stale pins are removed."""
    out: dict[str, set[str]] = {}
    for path in sorted((Path(cache) / "pins").glob("*.json")):
        try:
            doc = json.loads(path.read_text())
            digests, record = set(doc["digests"]), Path(doc["record"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable: keep the file, pin nothing (a later write repairs it)
        if record.exists():
            out[path.stem] = digests
        else:
            path.unlink(missing_ok=True)
    return out
