"""A DNS client for the tests, written by hand (no DNS library): encode a query, send it over UDP,
decode the answer. Also `python -m tests.net.dnsq ADDR PORT NAME [TYPE]` (run inside a test's
network namespace), which prints the decoded reply as JSON, or null when none came."""
from __future__ import annotations

import json
import socket
import struct
import sys

TYPES = {"A": 1, "AAAA": 28, "TXT": 16, "ANY": 255}


def encode_name(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.rstrip(".").split(".")) + b"\0"


def query(name: str, qtype: str = "A", qid: int = 0x1234, rd: bool = True, edns: bool = False) -> bytes:
    """A standard query; edns adds an OPT record in the additional section (as resolved sends)."""
    flags = 0x0100 if rd else 0
    packet = struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 1 if edns else 0)
    packet += encode_name(name) + struct.pack("!HH", TYPES[qtype], 1)
    if edns:
        packet += b"\0" + struct.pack("!HHIH", 41, 1232, 0, 0)
    return packet


def decode(reply: bytes) -> dict:
    """The header fields, the question bytes and the answers (name as the raw 2-byte pointer)."""
    qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", reply[:12])
    pos = 12
    while reply[pos]:
        pos += 1 + reply[pos]
    pos += 5
    question = reply[12:pos]
    answers = []
    for _ in range(an):
        ptr, rtype, rclass, ttl, rdlen = struct.unpack("!HHHIH", reply[pos:pos + 12])
        rdata = reply[pos + 12:pos + 12 + rdlen]
        answers.append({"ptr": ptr, "type": rtype, "class": rclass, "ttl": ttl,
                        "data": socket.inet_ntoa(rdata) if rtype == 1 and rdlen == 4 else rdata.hex()})
        pos += 12 + rdlen
    return {"id": qid, "qr": bool(flags & 0x8000), "opcode": (flags >> 11) & 0xF, "aa": bool(flags & 0x0400),
            "tc": bool(flags & 0x0200), "rd": bool(flags & 0x0100), "rcode": flags & 0xF,
            "counts": [qd, an, ns, ar], "question": question.hex(), "answers": answers, "length": len(reply),
            "end": pos}


def ask(addr: str, port: int, packet: bytes, timeout: float = 1.0) -> bytes | None:
    """Send one packet; the reply's bytes, or None when none came within timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (addr, port))
        try:
            return sock.recvfrom(4096)[0]
        except TimeoutError:
            return None


if __name__ == "__main__":
    addr, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    reply = ask(addr, port, query(name, sys.argv[4] if len(sys.argv) > 4 else "A"), timeout=3.0)
    print(json.dumps(decode(reply) if reply is not None else None))
