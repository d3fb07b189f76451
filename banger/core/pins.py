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
    """{owner: digests} of the pins whose owner still exists; stale pins are removed. An
    unreadable pin is left alone and pins nothing here: callers that evict check damaged() first."""
    out: dict[str, set[str]] = {}
    for path in sorted((Path(cache) / "pins").glob("*.json")):
        doc = _read(path)
        if doc is None:
            continue
        digests, record = doc
        if record.exists():
            out[path.stem] = digests
        else:
            path.unlink(missing_ok=True)
    return out


def damaged(cache: Path) -> list[str]:
    """One line per pin file that cannot be read: it could pin anything (e.g. a VM's rootfs)."""
    return [f"pin {path} is damaged; delete it if {path.stem} no longer exists (a VM's pin is written "
            f"again when it starts)" for path in sorted((Path(cache) / "pins").glob("*.json")) if _read(path) is None]


def _read(path: Path) -> tuple[set[str], Path] | None:
    try:
        doc = json.loads(path.read_text())
        digests, record = doc["digests"], doc["record"]
        if not isinstance(record, str) or not isinstance(digests, list) or \
                not all(isinstance(d, str) and ":" in d for d in digests):
            return None
        return set(digests), Path(record)
    except (OSError, ValueError, KeyError, TypeError):
        return None
