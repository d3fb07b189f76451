"""DNS for guests on the bridge: the nameserver a guest should use (the host's first one that a
guest can reach), whether systemd-resolved can resolve NAME.vm for the bridge, and one line
for `banger doctor` on how NAME.vm resolves on this host."""
from __future__ import annotations

import ipaddress
import os
import shutil
from pathlib import Path

RESOLV_CONF = Path("/etc/resolv.conf")
# systemd-resolved's list of the real upstream servers, when /etc/resolv.conf names its stub
RESOLVED_UPSTREAMS = Path("/run/systemd/resolve/resolv.conf")
RESOLVED_SOCKET = Path("/run/systemd/resolve/io.systemd.Resolve")


def nameservers(text: str) -> list[str]:
    """The nameserver addresses of a resolv.conf, in order (comments and junk skipped)."""
    found = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            found.append(words[1])
    return found


def usable(text: str) -> str | None:
    """The first nameserver that is not a loopback address. Guests get IPv4 only (NAT over the
    bridge), so IPv6 servers are passed over too; a link-local or unparsable one as well."""
    for server in nameservers(text):
        try:
            ip = ipaddress.ip_address(server.split("%", 1)[0])
        except ValueError:
            continue
        if ip.version == 4 and not ip.is_loopback and not ip.is_link_local and not ip.is_unspecified:
            return str(ip)
    return None


def guest_dns(resolv_conf: Path = RESOLV_CONF, upstreams: Path = RESOLVED_UPSTREAMS) -> str | None:
    """The host's first non-loopback nameserver, else (a local stub such as systemd-resolved's
    127.0.0.53) the first of systemd-resolved's upstreams, else None."""
    for path in (resolv_conf, upstreams):
        try:
            server = usable(path.read_text())
        except OSError:
            continue
        if server:
            return server
    return None


def resolved_runs(socket: Path = RESOLVED_SOCKET) -> bool:
    """systemd-resolved runs and can be told about banger's bridge: its socket exists, resolvectl
    is installed, and this process is in the network namespace resolved serves (init's: in
    another one, an interface name would name some other link of the host's)."""
    if not (socket.exists() and shutil.which("resolvectl")):
        return False
    try:
        return os.readlink("/proc/self/ns/net") == os.readlink("/proc/1/ns/net")
    except OSError:
        return False


def dns_status(socket: Path = RESOLVED_SOCKET) -> str:
    """One line for `banger doctor`."""
    if resolved_runs(socket):
        return "NAME.vm resolves on the bridge through systemd-resolved (banger's responder at the gateway)"
    if socket.exists() and shutil.which("resolvectl"):
        return ("NAME.vm resolves only through ssh's config (systemd-resolved runs in another "
                "network namespace)")
    return "NAME.vm resolves only through ssh's config (no systemd-resolved here)"
