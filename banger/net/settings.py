"""What bridge networking is made of, as pure values: the settings from config.json, the lease a
VM holds, and the names and numbers derived from them (tap name, MAC, nft table, the lowest free
address). No command runs here, so all of it is testable without root."""
from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import asdict, dataclass
from typing import Iterable

from banger.core.errors import BuildError

NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,14}")  # a Linux interface name that is also an nft word
TAP_PREFIX = "bgt"
BRIDGE_EXAMPLE = '"bridge": {"name": "banger0", "subnet": "172.30.0.0/24"}'


class NetError(BuildError, RuntimeError):
    """Bridge networking failed for a reason the user can act on; the message is one line that
    names the problem and the fix. A BuildError too, so the CLI's one-line handlers catch it."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class BridgeSettings:
    name: str = "banger0"
    subnet: str = "172.30.0.0/24"  # any IPv4 network of /29 or larger; the gateway is its first host

    def __post_init__(self):
        check_name(self.name)
        object.__setattr__(self, "subnet", str(check_subnet(self.subnet)))

    @classmethod
    def from_config(cls, settings: dict) -> "BridgeSettings":
        """From the whole config.json dict: its optional {"bridge": {"name": ..., "subnet": ...}}."""
        section = (settings or {}).get("bridge", {})
        if section is None:
            section = {}
        if not isinstance(section, dict):
            raise NetError(f"config.json: bridge must be an object, e.g. {BRIDGE_EXAMPLE}")
        unknown = sorted(set(section) - {"name", "subnet"})
        if unknown:
            raise NetError(f"config.json: bridge.{unknown[0]} is not a setting (known: name, subnet), "
                           f"e.g. {BRIDGE_EXAMPLE}")
        for key in ("name", "subnet"):
            if key in section and not isinstance(section[key], str):
                raise NetError(f"config.json: bridge.{key} must be a string, e.g. {BRIDGE_EXAMPLE}")
        return cls(**section)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.network.network_address + 1

    @property
    def gateway_cidr(self) -> str:
        return f"{self.gateway}/{self.network.prefixlen}"

    @property
    def table(self) -> str:
        """The one nft table banger owns for this bridge (family ip)."""
        return f"banger_{self.name}"

    @property
    def bridge_alias(self) -> str:
        """The interface alias that marks the bridge as banger's."""
        return f"banger bridge {self.subnet}"

    def tap_alias(self, vm: str) -> str:
        """The interface alias that marks a tap as banger's, for this bridge and VM."""
        return f"banger:{self.name}:{vm}"


def check_name(name) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise NetError(f"config.json: bridge.name {name!r} is not a usable interface name "
                       f"(a letter, then up to 14 letters, digits, '_', '.', '-'), e.g. {BRIDGE_EXAMPLE}")
    if name.startswith(TAP_PREFIX):
        raise NetError(f"config.json: bridge.name {name!r} may not start with {TAP_PREFIX!r} "
                       f"(banger's tap names do), e.g. {BRIDGE_EXAMPLE}")
    return name


def check_subnet(subnet) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(subnet, strict=True)
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError, TypeError) as exc:
        raise NetError(f"config.json: bridge.subnet {subnet!r} is not an IPv4 network ({exc}), "
                       f"e.g. {BRIDGE_EXAMPLE}") from None
    if net.prefixlen > 29:
        raise NetError(f"config.json: bridge.subnet {subnet!r} is too small (a gateway and VMs need "
                       f"/29 or larger), e.g. {BRIDGE_EXAMPLE}")
    if net.prefixlen < 8 or net.is_loopback or net.is_multicast or net.is_link_local or net.is_reserved \
            or net.network_address.is_unspecified:
        raise NetError(f"config.json: bridge.subnet {subnet!r} is not a usable private range, "
                       f"e.g. {BRIDGE_EXAMPLE}")
    return net


@dataclass(frozen=True)
class Lease:
    vm: str
    address: str  # "172.30.0.2/24"
    gateway: str  # "172.30.0.1"
    tap: str
    mac: str
    dns: str | None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Lease":
        return cls(vm=str(data["vm"]), address=str(data["address"]), gateway=str(data["gateway"]),
                   tap=str(data["tap"]), mac=str(data["mac"]),
                   dns=None if data.get("dns") is None else str(data["dns"]))

    @property
    def ip(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Interface(self.address).ip


def tap_name(bridge: str, vm: str) -> str:
    """'bgt' + 8 hex of a hash of bridge and VM name: 11 characters, stable, unique enough, and
    in a prefix no other tool uses (two banger installs with other bridges don't clash)."""
    return TAP_PREFIX + hashlib.sha256(f"{bridge}\0{vm}".encode()).hexdigest()[:8]


def mac_for(address: ipaddress.IPv4Address | str) -> str:
    """A locally administered unicast MAC (first octet 06) that embeds the IPv4 address."""
    ip = ipaddress.IPv4Interface(str(address)).ip
    return "06:00:" + ":".join(f"{b:02x}" for b in ip.packed)


def bridge_mac(settings: BridgeSettings) -> str:
    """The bridge's own fixed MAC (its gateway's), so adding ports never changes it under guests."""
    return mac_for(settings.gateway)


def allocate(settings: BridgeSettings, taken: Iterable[str]) -> str:
    """The lowest host address after the gateway that no lease holds, as "a.b.c.d/len"."""
    net = settings.network
    used = {ipaddress.IPv4Interface(a).ip for a in taken}
    for host in net.hosts():
        if host == settings.gateway or host in used:
            continue
        return f"{host}/{net.prefixlen}"
    raise NetError(f"no free address left in bridge.subnet {settings.subnet} ({len(used)} leases): "
                   f"remove VMs (banger vm rm) or set a larger bridge.subnet in config.json")


def make_lease(settings: BridgeSettings, vm: str, address: str, dns: str | None) -> Lease:
    return Lease(vm=vm, address=address, gateway=str(settings.gateway), tap=tap_name(settings.name, vm),
                 mac=mac_for(ipaddress.IPv4Interface(address).ip), dns=dns)
