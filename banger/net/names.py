"""The NAME.vm responder: a tiny authoritative DNS server for the `.vm` zone, bound to the bridge's
gateway address, that systemd-resolved asks for NAME.vm (`resolvectl domain BRIDGE '~vm'`).

    python -I -S names.py STATE_DIR BIND_ADDR [PORT]

It is run as a file with the standard library only (like the hypervisor's keeper.py), in its own
session, started by bridge.py when the bridge comes up and stopped (SIGTERM) when it goes.
  - UDP on BIND_ADDR:PORT (PORT 53 unless given: the tests bind 127.0.0.1 on a free port).
  - A query for `<vm>.vm`, type A (or ANY), gets the VM's leased IPv4 address from
    STATE_DIR/network/leases.json (reread whenever the file changes), TTL 5 s; another type gets
    an empty answer (NOERROR); a `.vm` name no lease has gets NXDOMAIN; a name outside `.vm` gets
    REFUSED. Nothing is ever forwarded anywhere. Malformed packets and responses get no reply.
  - Once bound it prints `ready` on stdout (or `error: ...` and exits 1), then stdout goes to
    /dev/null; stderr is the log the starter opened.
"""
from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
import sys

TTL = 5
ZONE = b"vm"
TYPE_A, TYPE_ANY, CLASS_IN, CLASS_ANY = 1, 255, 1, 255
NOERROR, FORMERR, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 3, 4, 5
QR, AA, RD = 0x8000, 0x0400, 0x0100
OPCODE_MASK = 0x7800


def parse_question(packet: bytes) -> tuple[list[bytes], int, int, int] | None:
    """(labels of the name, qtype, qclass, end offset of the question) of a query's single
    question, or None when the packet is not a well-formed query (no compression in a question)."""
    if len(packet) < 12:
        return None
    _, flags, qdcount = struct.unpack("!HHH", packet[:6])
    if flags & QR or qdcount != 1:
        return None
    labels, pos, total = [], 12, 0
    while True:
        if pos >= len(packet):
            return None
        length = packet[pos]
        if length == 0:
            pos += 1
            break
        if length & 0xC0:  # a pointer or a reserved label type: not in a question we answer
            return None
        label = packet[pos + 1:pos + 1 + length]
        if len(label) != length:
            return None
        total += length + 1
        if total > 255:
            return None
        labels.append(label)
        pos += 1 + length
    if pos + 4 > len(packet):
        return None
    qtype, qclass = struct.unpack("!HH", packet[pos:pos + 4])
    return labels, qtype, qclass, pos + 4


def answer(packet: bytes, leases: dict[str, str]) -> bytes | None:
    """The response to one query packet given {vm name: IPv4 address}, or None (no reply)."""
    parsed = parse_question(packet)
    if parsed is None:
        return None
    labels, qtype, qclass, end = parsed
    qid, flags = struct.unpack("!HH", packet[:4])
    out_flags = QR | AA | (flags & (OPCODE_MASK | RD))
    question = packet[12:end]
    address = None
    if flags & OPCODE_MASK:
        rcode = NOTIMP
    elif not labels or labels[-1].lower() != ZONE:
        rcode = REFUSED
        out_flags &= ~AA
    elif len(labels) == 1:
        rcode = NOERROR  # the zone itself: exists, holds no address
    else:
        try:
            name = b".".join(labels[:-1]).decode()
        except UnicodeDecodeError:
            name = None
        address = lookup(leases, name) if name is not None else None
        rcode = NXDOMAIN if address is None else NOERROR
        if qclass not in (CLASS_IN, CLASS_ANY) or qtype not in (TYPE_A, TYPE_ANY):
            address = None  # the name exists; it has no record of that type or class
    header = struct.pack("!HHHHHH", qid, out_flags | rcode, 1, 1 if address else 0, 0, 0)
    body = question
    if address:
        body += struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, TTL, 4) + ipaddress.IPv4Address(address).packed
    return header + body


def lookup(leases: dict[str, str], name: str) -> str | None:
    """The address leased to the VM called `name` (DNS names are case-insensitive: an exact match
    first, then the only case-insensitive one)."""
    if name in leases:
        return leases[name]
    matches = [ip for vm, ip in leases.items() if vm.lower() == name.lower()]
    return matches[0] if len(matches) == 1 else None


class Leases:
    """leases.json ({"version": 1, "leases": {vm: {"address": "a.b.c.d/len", ...}}}), reread only
    when its mtime or size changes; a missing or unreadable file means no lease."""

    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, "network", "leases.json")
        self.stamp: tuple | None = None
        self.current: dict[str, str] = {}

    def get(self) -> dict[str, str]:
        try:
            st = os.stat(self.path)
        except OSError:
            self.stamp, self.current = None, {}
            return self.current
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self.stamp:
            self.stamp, self.current = stamp, self._read()
        return self.current

    def _read(self) -> dict[str, str]:
        try:
            with open(self.path) as f:
                raw = json.load(f).get("leases", {})
            return {str(vm): str(ipaddress.IPv4Interface(entry["address"]).ip)
                    for vm, entry in raw.items() if isinstance(entry, dict) and "address" in entry}
        except (OSError, ValueError, AttributeError, TypeError, KeyError) as exc:
            sys.stderr.write(f"names: leases.json unreadable ({exc}): answering NXDOMAIN\n")
            return {}


def serve(sock: socket.socket, leases: Leases) -> None:
    while True:
        try:
            packet, peer = sock.recvfrom(4096)
        except InterruptedError:
            continue
        except OSError:
            continue
        try:
            reply = answer(packet, leases.get())
            if reply is not None:
                sock.sendto(reply, peer)
        except Exception as exc:  # one bad packet never stops the responder
            sys.stderr.write(f"names: dropped a query ({type(exc).__name__}: {exc})\n")


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4) or (len(argv) == 4 and not argv[3].isdigit()):
        sys.stderr.write("usage: names.py STATE_DIR BIND_ADDR [PORT]\n")
        return 2
    state_dir, addr, port = argv[1], argv[2], int(argv[3]) if len(argv) == 4 else 53
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((addr, port))
    except OSError as exc:
        print(f"error: cannot listen on {addr}:{port} ({exc.strerror})", flush=True)
        return 1
    print("ready", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    serve(sock, Leases(state_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
