"""The NAME.vm responder (banger/net/names.py) as the standalone process banger runs, bound to
127.0.0.1 on a free port and asked over UDP on loopback with queries encoded by hand; and the
doctor's line when systemd-resolved is (not) there."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from banger.net import dns, vmdns
from tests.net.dnsq import ask, decode, encode_name, query

LEASES = {"version": 1, "leases": {
    "vm-a": {"address": "172.30.0.2/24", "gateway": "172.30.0.1", "tap": "bgt00000001", "mac": "06:00:ac:1e:00:02", "dns": None},
    "web.1": {"address": "172.30.0.7/24", "gateway": "172.30.0.1", "tap": "bgt00000002", "mac": "06:00:ac:1e:00:07", "dns": None},
}}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def responder(tmp_path):
    state = tmp_path / "state"
    (state / "network").mkdir(parents=True)
    (state / "network" / "leases.json").write_text(json.dumps(LEASES))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-I", "-S", str(vmdns.RESPONDER), str(state), "127.0.0.1", str(port)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield state, port
    finally:
        proc.terminate()
        proc.wait(5)


def test_a_leased_vm_gets_its_address(responder):
    _, port = responder
    packet = query("vm-a.vm", "A", qid=0xBEEF, edns=True)
    reply = ask("127.0.0.1", port, packet)
    got = decode(reply)
    assert got["id"] == 0xBEEF and got["qr"] and got["aa"] and got["rd"] and got["rcode"] == 0
    assert got["counts"] == [1, 1, 0, 0]
    assert got["question"] == (encode_name("vm-a.vm") + b"\0\x01\0\x01").hex()
    assert got["answers"] == [{"ptr": 0xC00C, "type": 1, "class": 1, "ttl": 5, "data": "172.30.0.2"}]
    assert got["end"] == len(reply)
    # the exact bytes: header, the question echoed, one answer pointing at the question's name
    assert reply == (b"\xbe\xef\x85\x00\x00\x01\x00\x01\x00\x00\x00\x00" + b"\x04vm-a\x02vm\x00\x00\x01\x00\x01"
                     + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04" + bytes([172, 30, 0, 2]))


def test_names_are_case_insensitive_and_may_hold_dots_and_rd_is_copied(responder):
    _, port = responder
    got = decode(ask("127.0.0.1", port, query("VM-A.Vm", rd=False)))
    assert not got["rd"] and got["answers"][0]["data"] == "172.30.0.2"
    assert got["question"] == (encode_name("VM-A.Vm") + b"\0\x01\0\x01").hex()  # echoed as asked
    assert decode(ask("127.0.0.1", port, query("web.1.vm")))["answers"][0]["data"] == "172.30.0.7"


def test_unknown_vm_is_nxdomain_outside_vm_is_refused_other_types_get_no_answer(responder):
    _, port = responder
    unknown = decode(ask("127.0.0.1", port, query("nope.vm")))
    assert unknown["rcode"] == 3 and unknown["aa"] and unknown["counts"] == [1, 0, 0, 0]
    outside = decode(ask("127.0.0.1", port, query("example.com")))
    assert outside["rcode"] == 5 and outside["counts"] == [1, 0, 0, 0] and not outside["aa"]
    assert decode(ask("127.0.0.1", port, query("vm.example")))["rcode"] == 5
    aaaa = decode(ask("127.0.0.1", port, query("vm-a.vm", "AAAA")))
    assert aaaa["rcode"] == 0 and aaaa["counts"] == [1, 0, 0, 0] and aaaa["qr"]


def test_malformed_packets_and_responses_get_no_reply_and_do_not_stop_it(responder):
    _, port = responder
    good = query("vm-a.vm")
    for bad in (b"", b"\x12\x34\x01", good[:11], good[:20], good[:-2],  # truncated
                b"\xff" * 40,                                           # garbage (QR set, bad counts)
                good[:4] + b"\x00\x02" + good[6:],                      # two questions announced
                b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",  # pointer
                b"\x12\x34\x81\x00" + good[4:]):                        # a response, not a query
        assert ask("127.0.0.1", port, bad, timeout=0.3) is None, bad
    assert decode(ask("127.0.0.1", port, good))["answers"][0]["data"] == "172.30.0.2"


def test_leases_are_reread_when_the_file_changes(responder):
    state, port = responder
    leases = state / "network" / "leases.json"
    body = json.loads(leases.read_text())
    body["leases"]["late"] = {**body["leases"]["vm-a"], "address": "172.30.0.9/24"}
    del body["leases"]["vm-a"]
    time.sleep(0.01)
    leases.write_text(json.dumps(body))
    assert decode(ask("127.0.0.1", port, query("late.vm")))["answers"][0]["data"] == "172.30.0.9"
    assert decode(ask("127.0.0.1", port, query("vm-a.vm")))["rcode"] == 3
    leases.unlink()  # no lease left at all
    assert decode(ask("127.0.0.1", port, query("late.vm")))["rcode"] == 3


def test_a_port_in_use_is_reported_on_its_first_line(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        proc = subprocess.run([sys.executable, "-I", "-S", str(vmdns.RESPONDER), str(tmp_path), "127.0.0.1",
                               str(taken.getsockname()[1])], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 1 and proc.stdout.startswith("error: cannot listen on 127.0.0.1:")


def test_doctor_says_how_names_resolve(tmp_path, monkeypatch):
    socket_path = tmp_path / "io.systemd.Resolve"
    socket_path.touch()
    monkeypatch.setattr(dns.shutil, "which", lambda tool: f"/bin/{tool}")
    monkeypatch.setattr(dns.os, "readlink", lambda path: "net:[1]")
    assert dns.dns_status(socket_path) == ("NAME.vm resolves on the bridge through systemd-resolved "
                                           "(banger's responder at the gateway)")
    assert dns.resolved_runs(socket_path) and vmdns.active(True) and not vmdns.active(False)
    monkeypatch.setattr(dns.os, "readlink", lambda path: "net:[1]" if path.startswith("/proc/1/") else "net:[2]")
    assert not dns.resolved_runs(socket_path)
    assert "another network namespace" in dns.dns_status(socket_path)
