"""The VM side of `--net bridge`: a lease (address, tap, MAC) from banger.net for a VM, its tap
dropped when the VM stops, the lease when it is removed, and the bridge when no VM is left."""
from __future__ import annotations

import os
from pathlib import Path

from banger.core.config import Dirs
from banger.net import bridge
from banger.vm.records import VMStateError

MODES = ("user", "bridge")
SYS_NET = Path("/sys/class/net")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise VMStateError(f"--net {mode!r}; use --net user (no root: QEMU user-mode networking) or "
                           f"--net bridge (root: a tap on the {bridge.BridgeSettings().name} bridge)")
    if mode == "bridge" and os.geteuid() != 0:
        raise VMStateError("--net bridge needs root (it creates a bridge, a tap and NAT rules); "
                           "run as root or use --net user")
    return mode


def settings_of(settings: dict) -> bridge.BridgeSettings:
    try:
        return bridge.BridgeSettings.from_config(settings)
    except bridge.NetError as exc:
        raise VMStateError(str(exc)) from None


def attach(dirs: Dirs, settings: dict, name: str) -> bridge.Lease:
    try:
        return bridge.attach(dirs.state, settings_of(settings), name)
    except bridge.NetError as exc:
        raise VMStateError(str(exc)) from None


def release(dirs: Dirs, settings: dict, name: str) -> None:
    """The VM stopped: its tap goes, its address stays reserved for its next start. (Every
    command calls this for stopped bridge VMs: a start that was killed leaves its tap; without a
    tap nothing runs.)"""
    try:
        lease = bridge.leases(dirs.state).get(name)
    except bridge.NetError:
        return
    if lease is not None and (SYS_NET / lease.tap).exists():
        bridge.release_tap(dirs.state, settings_of(settings), name)


def forget(dirs: Dirs, settings: dict, name: str) -> None:
    """The VM is removed: tap and lease go, and the bridge and its NAT with the last one."""
    if _has_lease(dirs.state, name):
        bridge.detach(dirs.state, settings_of(settings), name)


def _has_lease(state: Path, name: str) -> bool:
    try:
        return name in bridge.leases(state)
    except bridge.NetError:
        return False
