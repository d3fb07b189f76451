"""Bridge networking for `banger vm create --net bridge` (root only): one bridge with the gateway
address, a tap per VM enslaved to it, an address lease per VM persisted in
<state_dir>/network/leases.json, outbound NAT in banger's own nft table, ip_forward on; all of it
removed (and ip_forward restored) when the last lease goes.

Every change holds the exclusive lock <state_dir>/network/lock. Ownership: the bridge carries an
alias naming this state dir (or, right after a crash before the alias was set, the fixed MAC banger
gives it); a tap is banger's when its name is the one derived for the VM and it is a tap whose
alias is unset or banger's. Nothing else is ever changed or deleted. A lease is written only after
its tap exists; a tap left without a lease by a crash is reused by the next attach of its VM and
removed by cleanup() or the last detach()."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

from banger.net import host, store, vmdns
from banger.net.dns import dns_status, guest_dns
from banger.net.settings import (TAP_PREFIX, BridgeSettings, Lease, NetError, allocate, bridge_mac,
                                 make_lease, tap_name)

__all__ = ["BridgeSettings", "Lease", "NetError", "attach", "release_tap", "detach", "leases", "cleanup",
           "status", "dns_status", "tap_name"]


def owner_alias(state_dir: Path, settings: BridgeSettings) -> str:
    """The alias of a bridge this state dir created: says banger, which state, which subnet."""
    owner = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:8]
    return f"banger {owner} {settings.subnet}"


def _check_vm(vm: str) -> None:
    if not isinstance(vm, str) or not vm or len(vm) > 200 or not vm.isprintable() or ":" in vm:
        raise NetError(f"VM name {vm!r} cannot name a network lease: use up to 200 printable "
                       f"characters without ':'")


def _owns_bridge(state_dir: Path, settings: BridgeSettings, info: dict | None) -> bool:
    if info is None or host.kind(info) != "bridge":
        return False
    alias = info.get("ifalias")
    return alias == owner_alias(state_dir, settings) or (
        alias is None and info.get("address", "").lower() == bridge_mac(settings))


def _owns_tap(settings: BridgeSettings, name: str, info: dict | None) -> str | None:
    """The VM a tap belongs to when it is banger's tap on this bridge, else None."""
    if info is None or host.kind(info) != "tap" or not name.startswith(TAP_PREFIX):
        return None
    prefix = f"banger:{settings.name}:"
    alias = info.get("ifalias") or ""
    if alias.startswith(prefix) and tap_name(settings.name, alias[len(prefix):]) == name:
        return alias[len(prefix):]
    return None


def _delete_tap(settings: BridgeSettings, links: dict, vm: str) -> str | None:
    """Delete the VM's tap if it exists and is banger's; what was removed, or None."""
    name = tap_name(settings.name, vm)
    info = links.get(name)
    if info is None:
        return None
    owner = _owns_tap(settings, name, info)
    if owner is None and (host.kind(info) != "tap" or info.get("ifalias")):
        return None  # someone else's interface under our derived name: never touch it
    host.delete_link(name)
    return f"tap {name} of VM {vm}"


def _teardown(state_dir: Path, settings: BridgeSettings) -> list[str]:
    """No lease is left: stop the NAME.vm responder and revert resolved's settings for the bridge,
    remove banger's remaining taps on the bridge, the bridge, the nft table, and put ip_forward
    back. Idempotent; skips what is gone or not banger's."""
    removed: list[str] = []
    links = host.links()
    bridge = links.get(settings.name)
    if bridge is not None and not _owns_bridge(state_dir, settings, bridge):
        vmdns.tear_down(state_dir, revert=False)
        store.save_host(state_dir, {})  # the name is someone else's now: what is there is theirs
        return removed
    removed += vmdns.tear_down(state_dir)
    removed += _delete_orphan_taps(settings, links, keep=set())
    if bridge is not None:
        host.delete_link(settings.name)
        removed.append(f"bridge {settings.name}")
    if host.nat_table(settings) is not None:
        host.delete_nat(settings)
        removed.append(f"nft table ip {settings.table}")
    before = store.load_host(state_dir).get("ip_forward_before")
    if before == "0" and host.read_forward() == "1":
        host.write_forward("0")
        removed.append("net.ipv4.ip_forward=1 (restored to 0)")
    store.save_host(state_dir, {})
    return removed


def _delete_orphan_taps(settings: BridgeSettings, links: dict, keep: set[str]) -> list[str]:
    """Delete banger's taps on this bridge whose VM is not in keep (no lease claims them)."""
    removed = []
    for name, info in sorted(links.items()):
        vm = _owns_tap(settings, name, info)
        if vm is not None and vm not in keep:
            host.delete_link(name)
            removed.append(f"tap {name} of VM {vm} (no lease)")
    return removed


def _reconcile_settings(state_dir: Path, settings: BridgeSettings, current: dict[str, Lease]) -> None:
    """The config may have changed since the leases were made: refuse while VMs hold leases from
    the old bridge or subnet; with none left, tear the old bridge down first."""
    recorded = store.load_host(state_dir)
    old_name, old_subnet = recorded.get("bridge"), recorded.get("subnet")
    stale = [vm for vm, lease in current.items() if lease.ip not in settings.network]
    if current and ((old_name and old_name != settings.name) or stale):
        vms = ", ".join(stale or sorted(current))
        raise NetError(f"VMs {vms} hold leases on bridge {old_name or '?'} ({old_subnet or '?'}), not on "
                       f"bridge.name {settings.name} / bridge.subnet {settings.subnet}: remove them "
                       f"(banger vm rm) or restore the bridge settings in config.json")
    if not current and old_name and (old_name, old_subnet) != (settings.name, settings.subnet):
        _teardown(state_dir, BridgeSettings(name=old_name, subnet=old_subnet))


def _ensure_bridge(state_dir: Path, settings: BridgeSettings, resolved: bool | None = None) -> None:
    info = host.links().get(settings.name)
    if info is None:
        host.check_subnet_free(settings)
        # recorded before anything changes, so a crash after this point still knows what to undo
        store.save_host(state_dir, {"bridge": settings.name, "subnet": settings.subnet,
                                    "ip_forward_before": host.read_forward()})
        host.create_bridge(settings)
        host.set_alias(settings.name, owner_alias(state_dir, settings))
    elif not _owns_bridge(state_dir, settings, info):
        why = ("another banger state dir created it" if str(info.get("ifalias", "")).startswith("banger ")
               else "banger did not create it")
        raise NetError(f"an interface {settings.name} exists and {why}: set another bridge.name in "
                       f"config.json (or remove {settings.name} if it is a leftover)")
    else:
        if info.get("ifalias") is None:
            host.set_alias(settings.name, owner_alias(state_dir, settings))
        recorded = store.load_host(state_dir)
        if recorded.get("bridge") != settings.name:
            store.save_host(state_dir, {"bridge": settings.name, "subnet": settings.subnet,
                                        "ip_forward_before": None})
    host.ensure_gateway(settings)
    vmdns.bring_up(state_dir, settings, resolved)  # a problem is logged, never fails the VM


def _ensure_tap(settings: BridgeSettings, vm: str, tap: str) -> None:
    info = host.links().get(tap)
    alias = settings.tap_alias(vm)
    if info is None:
        host.create_tap(tap, alias)
    elif host.kind(info) != "tap" or info.get("ifalias") not in (None, alias):
        raise NetError(f"an interface {tap} exists that banger did not create for VM {vm}: "
                       f"remove it (ip link delete {tap}) and retry")
    elif info.get("ifalias") is None:  # created by an attach that crashed before naming it
        host.set_alias(tap, alias)
    host.enslave_and_up(tap, settings.name)


def attach(state_dir: Path, settings: BridgeSettings, vm: str, resolved: bool | None = None) -> Lease:
    """Give the VM its tap on the bridge and its address (the lease it had, or the lowest free),
    setting up the bridge, NAT and ip_forward when they are not there yet, and NAME.vm through
    systemd-resolved when it runs (`resolved` overrides that detection: tests)."""
    _check_vm(vm)
    host.require_root_and_tools()
    with store.locked(state_dir):
        current = store.load_leases(state_dir)
        _reconcile_settings(state_dir, settings, current)
        old = current.get(vm)
        address = old.address if old else allocate(settings, [ls.address for ls in current.values()])
        lease = make_lease(settings, vm, address, guest_dns())
        _ensure_bridge(state_dir, settings, resolved)
        host.apply_nat(settings)
        if host.read_forward() != "1":
            host.write_forward("1")
        _ensure_tap(settings, vm, lease.tap)
        if old != lease:  # written only now that the tap exists
            current[vm] = lease
            store.save_leases(state_dir, current)
        return lease


def release_tap(state_dir: Path, settings: BridgeSettings, vm: str) -> None:
    """The VM stopped: delete its tap, keep its lease (it gets the same address when it starts)."""
    _check_vm(vm)
    host.require_root_and_tools()
    with store.locked(state_dir):
        _delete_tap(_recorded_settings(state_dir, settings), host.links(), vm)


def detach(state_dir: Path, settings: BridgeSettings, vm: str) -> None:
    """The VM is removed: delete its tap and drop its lease; with no lease left, remove the
    bridge, the nft table, and restore ip_forward. Idempotent."""
    _check_vm(vm)
    if os.geteuid() != 0 and not _recorded(state_dir):
        return  # nothing was ever set up here, so there is nothing to undo
    host.require_root_and_tools()
    with store.locked(state_dir):
        settings = _recorded_settings(state_dir, settings)
        current = store.load_leases(state_dir)
        _delete_tap(settings, host.links(), vm)
        if current.pop(vm, None) is not None:
            store.save_leases(state_dir, current)
        if not current:
            _teardown(state_dir, settings)


def leases(state_dir: Path) -> dict[str, Lease]:
    """Every VM's lease, by VM name."""
    return store.load_leases(state_dir)


def cleanup(state_dir: Path, settings: BridgeSettings, keep: Callable[[str], bool]) -> list[str]:
    """For `banger vm prune` / `banger doctor --fix`: drop the leases (and taps) of VMs for which
    keep(vm) is False and banger's taps no lease claims; tear down when no lease is left.
    Returns what it removed, one phrase each."""
    if os.geteuid() != 0 and not _recorded(state_dir):
        return []
    host.require_root_and_tools()
    removed: list[str] = []
    with store.locked(state_dir):
        settings = _recorded_settings(state_dir, settings)
        current = store.load_leases(state_dir)
        links = host.links()
        for vm in sorted(current):
            if not keep(vm):
                gone = _delete_tap(settings, links, vm)
                removed += [gone] if gone else []
                removed.append(f"lease of VM {vm} ({current.pop(vm).address})")
        store.save_leases(state_dir, current)
        if not current:
            return removed + _teardown(state_dir, settings)
        links = host.links()
        if links.get(settings.name) is None or _owns_bridge(state_dir, settings, links[settings.name]):
            removed += _delete_orphan_taps(settings, links, keep=set(current))
    return removed


def status(state_dir: Path, settings: BridgeSettings) -> dict:
    """What exists, for `banger doctor` and tests. table_present is None when not root (nft
    cannot list then)."""
    links = host.links()
    bridge = links.get(settings.name)
    current = store.load_leases(state_dir)
    taps = {}
    for name, info in sorted(links.items()):
        vm = _owns_tap(settings, name, info)
        if vm is not None:
            taps[name] = {"vm": vm, "master": info.get("master"), "up": host.is_up(info)}
    table = host.nat_table(settings) if os.geteuid() == 0 and host.shutil.which("nft") else None
    return {
        "bridge": settings.name,
        "bridge_present": bridge is not None,
        "bridge_owned": _owns_bridge(state_dir, settings, bridge),
        "bridge_up": bool(bridge and host.is_up(bridge)),
        "gateway": settings.gateway_cidr if bridge and settings.gateway_cidr in
        [c for _, c in host.ipv4_addresses(settings.name)] else None,
        "taps": taps,
        "taps_without_lease": sorted(t for t, v in taps.items() if v["vm"] not in current),
        "table": f"ip {settings.table}",
        "table_present": None if os.geteuid() != 0 else table is not None,
        "nat_rule": None if table is None else f"ip saddr {settings.subnet} oifname != \"{settings.name}\" masquerade" in table,
        "ip_forward": host.read_forward(),
        "leases": {vm: lease.to_json() for vm, lease in current.items()},
        "names": vmdns.status(state_dir),
    }


def _recorded(state_dir: Path) -> bool:
    d = store.network_dir(state_dir)
    return (d / "leases.json").exists() or (d / "host.json").exists()


def _recorded_settings(state_dir: Path, settings: BridgeSettings) -> BridgeSettings:
    """The bridge banger actually set up (host.json), which config.json may since have changed."""
    recorded = store.load_host(state_dir)
    if recorded.get("bridge") and recorded.get("subnet"):
        return BridgeSettings(name=recorded["bridge"], subnet=recorded["subnet"])
    return settings
