"""The network state banger keeps under <state_dir>/network/: the exclusive lock every change
holds, leases.json (VM -> Lease) and host.json (what banger changed on the host and must undo:
the bridge it created, ip_forward's value before). Both files are written atomically."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Iterator

from banger.core.fsutil import atomic_write
from banger.net.settings import Lease, NetError


def network_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "network"


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[Path]:
    """Hold the exclusive flock on <state_dir>/network/lock; yields the network dir."""
    d = network_dir(state_dir)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(d / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield d
    finally:
        os.close(fd)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise NetError(f"{path.name} in the network state is unreadable ({exc}): "
                       f"run `banger doctor --fix` or remove it when no VM uses bridge networking") from None
    if not isinstance(data, dict):
        raise NetError(f"{path.name} in the network state is not a JSON object: "
                       f"run `banger doctor --fix` or remove it when no VM uses bridge networking")
    return data


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def load_leases(state_dir: Path) -> dict[str, Lease]:
    path = network_dir(state_dir) / "leases.json"
    raw = _read_json(path).get("leases", {})
    try:
        return {vm: Lease.from_json({**entry, "vm": vm}) for vm, entry in sorted(raw.items())}
    except (KeyError, TypeError, AttributeError) as exc:
        raise NetError(f"leases.json in the network state has a malformed lease ({exc}): "
                       f"run `banger doctor --fix` or remove it when no VM uses bridge networking") from None


def save_leases(state_dir: Path, leases: dict[str, Lease]) -> None:
    """Write every lease at once (atomically); the file is removed when none is left."""
    path = network_dir(state_dir) / "leases.json"
    if not leases:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    body = {vm: {k: v for k, v in lease.to_json().items() if k != "vm"} for vm, lease in sorted(leases.items())}
    _write_json(path, {"version": 1, "leases": body})


def load_host(state_dir: Path) -> dict:
    """{"bridge": name, "ip_forward_before": "0"|"1"|None, "subnet": ..., "names": {"responder":
    {"pid", "started"}, "resolvectl": bridge}} (names: vmdns.py)."""
    return _read_json(network_dir(state_dir) / "host.json")


def save_host(state_dir: Path, host: dict) -> None:
    path = network_dir(state_dir) / "host.json"
    if not host:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    _write_json(path, host)
