"""The host side, through iproute2 (`ip`), `nft` and /proc/sys: every command's exit code and
stderr are checked and a failure becomes a one-line NetError. Only ever touches the objects it is
named: the bridge and taps banger owns, and its own nft table."""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from pathlib import Path

from banger.net.settings import BridgeSettings, NetError, bridge_mac

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
TOOLS = {"ip": "iproute2", "nft": "nftables"}


def require_root_and_tools() -> None:
    if os.geteuid() != 0:
        raise NetError("bridge networking needs root: run as root or use --net user")
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None:
            raise NetError(f"bridge networking needs `{tool}`, which is not installed: "
                           f"install {package} (scripts/setup.sh does) or use --net user")


def run(argv: list[str], stdin: str | None = None) -> str:
    """Run a command; its stdout, or a one-line NetError naming the command and its complaint."""
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise NetError(f"`{argv[0]}` is not installed: install {TOOLS.get(argv[0], argv[0])} "
                       f"or use --net user") from None
    except subprocess.TimeoutExpired:
        raise NetError(f"`{' '.join(argv)}` did not finish within 60 s: check the host's network "
                       f"configuration, then retry") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        why = lines[0] if lines else f"exit status {proc.returncode}"
        raise NetError(f"`{' '.join(argv)}` failed: {why}")
    return proc.stdout


def _ip_json(args: list[str]) -> list[dict]:
    out = run(["ip", "-j", *args])
    try:
        data = json.loads(out or "[]")
    except ValueError:
        raise NetError(f"`ip -j {' '.join(args)}` printed no JSON: iproute2 is too old, "
                       f"upgrade it or use --net user") from None
    return [d for d in data if isinstance(d, dict) and d.get("ifname")]


def links() -> dict[str, dict]:
    """Every interface in this network namespace, by name, with its details (kind, master, alias)."""
    return {d["ifname"]: d for d in _ip_json(["-d", "link", "show"])}


def kind(info: dict) -> str | None:
    linkinfo = info.get("linkinfo") or {}
    if linkinfo.get("info_kind") == "tun":
        return (linkinfo.get("info_data") or {}).get("type", "tun")
    return linkinfo.get("info_kind")


def is_up(info: dict) -> bool:
    return "UP" in info.get("flags", [])


def ipv4_addresses(name: str | None = None) -> list[tuple[str, str]]:
    """(interface, "a.b.c.d/len") of every IPv4 address, or only those of one interface."""
    args = ["-4", "addr", "show"] + (["dev", name] if name else [])
    return [(d["ifname"], f"{a['local']}/{a['prefixlen']}")
            for d in _ip_json(args) for a in d.get("addr_info", []) if a.get("family") == "inet"]


def check_subnet_free(settings: BridgeSettings) -> None:
    """Refuse a subnet that overlaps an address some other interface already has."""
    for ifname, cidr in ipv4_addresses():
        if ifname != settings.name and ipaddress.IPv4Interface(cidr).network.overlaps(settings.network):
            raise NetError(f"bridge.subnet {settings.subnet} overlaps {ifname}'s address {cidr}: "
                           f"set another bridge.subnet in config.json, e.g. \"10.213.0.0/24\"")


def create_bridge(settings: BridgeSettings) -> None:
    run(["ip", "link", "add", "name", settings.name, "address", bridge_mac(settings), "type", "bridge"])
    set_alias(settings.name, settings.bridge_alias)


def set_alias(name: str, alias: str) -> None:
    run(["ip", "link", "set", "dev", name, "alias", alias])


def ensure_gateway(settings: BridgeSettings) -> None:
    if settings.gateway_cidr not in [cidr for _, cidr in ipv4_addresses(settings.name)]:
        run(["ip", "addr", "add", settings.gateway_cidr, "dev", settings.name])
    run(["ip", "link", "set", "dev", settings.name, "up"])


def create_tap(name: str, alias: str) -> None:
    run(["ip", "tuntap", "add", "dev", name, "mode", "tap"])
    set_alias(name, alias)


def enslave_and_up(tap: str, bridge: str) -> None:
    run(["ip", "link", "set", "dev", tap, "master", bridge])
    run(["ip", "link", "set", "dev", tap, "up"])


def delete_link(name: str) -> None:
    """Delete one interface; gone already is fine (the callers checked it is banger's)."""
    if name in links():
        run(["ip", "link", "delete", "dev", name])


def nat_ruleset(settings: BridgeSettings) -> str:
    """One nft transaction that replaces banger's table for this bridge (and nothing else):
    masquerade what leaves the subnet through any interface but the bridge, accept forwarding
    from the bridge and the replies to it. Other tables and their verdicts stay as they are."""
    b, t = settings.name, settings.table
    return f"""add table ip {t}
delete table ip {t}
table ip {t} {{
  comment "banger: outbound NAT for bridge {b}"
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {settings.subnet} oifname != "{b}" masquerade
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "{b}" accept
    oifname "{b}" ct state established,related accept
  }}
}}
"""


def apply_nat(settings: BridgeSettings) -> None:
    run(["nft", "-f", "-"], stdin=nat_ruleset(settings))


def delete_nat(settings: BridgeSettings) -> None:
    """Remove banger's table for this bridge; absent already is fine (add-then-delete, atomically)."""
    run(["nft", "-f", "-"], stdin=f"add table ip {settings.table}\ndelete table ip {settings.table}\n")


def nat_table(settings: BridgeSettings) -> str | None:
    """`nft list table` of banger's table, or None when there is none."""
    tables = run(["nft", "list", "tables", "ip"]).split()
    if settings.table not in tables:
        return None
    return run(["nft", "list", "table", "ip", settings.table])


def read_forward() -> str:
    return IP_FORWARD.read_text().strip()


def write_forward(value: str) -> None:
    try:
        IP_FORWARD.write_text(value + "\n")
    except OSError as exc:
        raise NetError(f"cannot set net.ipv4.ip_forward={value} ({exc.strerror}): "
                       f"run as root, or set it yourself with `sysctl -w net.ipv4.ip_forward={value}`") from None
