"""Loopback ports for QEMU's user-mode SSH forward: pick a free one, see whether one is taken."""
from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def port_listening(port: int) -> bool:
    """Is some socket listening on 127.0.0.1:port? (read from /proc: probing by binding the port
    ourselves could steal it from the VMM that is about to bind it)"""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        next(f)
        return any(fields[1] == wanted and fields[3] == "0A" for fields in map(str.split, f))
