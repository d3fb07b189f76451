"""banger.net for real, as root, entirely inside a network namespace each test creates and deletes
(`ip netns add banger-test-<random>`): the bridge, taps, nft table and ip_forward the code sets up
and tears down exist only there. NAT is checked by reading the rules; no packet is sent anywhere.
Each test also checks that the host's own namespace got no such bridge or table."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from banger.net import vmdns
from banger.net.settings import tap_name
from tests.support_netns import own_namespace
from tests.support_tools import REPO

SUBNET = "172.30.0.0/24"


@pytest.fixture
def netns():
    with own_namespace("bridge networking tests") as name:
        yield name


@pytest.fixture
def net(netns, tmp_path):
    """A namespace, a state dir and a bridge name unique to this test, and ways to act in them."""
    env = Net(netns, tmp_path / "state", f"bnt{secrets.token_hex(3)}")
    yield env
    env.assert_host_untouched()


class Net:
    def __init__(self, ns: str, state, bridge: str):
        self.ns, self.state, self.bridge = ns, state, bridge
        self.table = f"banger_{bridge}"

    def run(self, *ops, subnet: str = SUBNET, env: dict | None = None) -> list:
        """banger.net calls inside the namespace, one JSON result per op."""
        proc = subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-m", "tests.net.ns_driver",
                               str(self.state), self.bridge, subnet, json.dumps(ops)],
                              cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def sh(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """A command inside the namespace."""
        proc = subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0 or not check, f"{argv}: {proc.stderr}"
        return proc

    def links(self) -> dict[str, dict]:
        out = self.sh("ip", "-j", "-d", "link", "show").stdout
        return {d["ifname"]: d for d in json.loads(out) if d.get("ifname")}

    def addresses(self, dev: str) -> list[str]:
        out = self.sh("ip", "-j", "-4", "addr", "show", "dev", dev).stdout
        return [f"{a['local']}/{a['prefixlen']}" for d in json.loads(out) for a in d.get("addr_info", [])]

    def table_text(self) -> str | None:
        proc = self.sh("nft", "list", "table", "ip", self.table, check=False)
        return proc.stdout if proc.returncode == 0 else None

    def forward(self) -> str:
        return self.sh("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip()

    def set_forward(self, value: str) -> None:
        self.sh("sysctl", "-q", "-w", f"net.ipv4.ip_forward={value}")

    def network_files(self) -> list[str]:
        d = self.state / "network"
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    def assert_host_untouched(self) -> None:
        host_link = subprocess.run(["ip", "link", "show", "dev", self.bridge], capture_output=True, text=True)
        assert host_link.returncode != 0, f"{self.bridge} exists in the host's namespace"
        tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
        assert self.table not in tables


def test_two_vms_get_a_bridge_taps_nat_and_forwarding_and_it_all_goes_with_the_last(net):
    net.set_forward("0")
    a, b = net.run(["attach", "a"], ["attach", "b"])
    assert (a["address"], b["address"]) == ("172.30.0.2/24", "172.30.0.3/24")
    assert a["gateway"] == b["gateway"] == "172.30.0.1"
    assert a["tap"] == tap_name(net.bridge, "a") != b["tap"] == tap_name(net.bridge, "b")
    assert (a["mac"], b["mac"]) == ("06:00:ac:1e:00:02", "06:00:ac:1e:00:03")

    links = net.links()
    assert "UP" in links[net.bridge]["flags"] and links[net.bridge]["linkinfo"]["info_kind"] == "bridge"
    assert net.addresses(net.bridge) == ["172.30.0.1/24"]
    for lease in (a, b):
        tap = links[lease["tap"]]
        assert tap["linkinfo"]["info_data"]["type"] == "tap" and tap["linkinfo"]["info_data"]["persist"]
        assert tap["master"] == net.bridge and "UP" in tap["flags"]
    table = net.table_text()
    assert f'ip saddr {SUBNET} oifname != "{net.bridge}" masquerade' in table
    assert f'iifname "{net.bridge}" accept' in table and "type nat hook postrouting" in table
    assert net.forward() == "1"
    persisted = json.loads((net.state / "network" / "leases.json").read_text())["leases"]
    assert {vm: e["address"] for vm, e in persisted.items()} == {"a": a["address"], "b": b["address"]}

    again, = net.run(["attach", "a"])  # a restart keeps its address and tap
    assert again == a

    released, leases = net.run(["release_tap", "a"], ["leases"])
    links = net.links()
    assert a["tap"] not in links and b["tap"] in links and net.bridge in links
    assert set(leases) == {"a", "b"} and leases["a"]["address"] == a["address"]
    restarted, = net.run(["attach", "a"])
    assert restarted == a and a["tap"] in net.links()

    _, _, status = net.run(["detach", "a"], ["attach", "c"], ["status"])
    assert status["leases"]["c"]["address"] == a["address"]  # the lowest free address again
    assert status["bridge_owned"] and status["nat_rule"] and status["ip_forward"] == "1"
    assert set(status["taps"]) == {b["tap"], tap_name(net.bridge, "c")} and not status["taps_without_lease"]

    net.run(["detach", "b"], ["detach", "c"])
    links = net.links()
    assert net.bridge not in links and not any(n.startswith("bgt") for n in links)
    assert net.table_text() is None
    assert net.forward() == "0"
    assert net.network_files() == ["lock"]
    assert net.run(["detach", "c"], ["detach", "never-attached"]) == [None, None]  # idempotent


def test_ip_forward_that_was_on_stays_on(net):
    net.set_forward("1")
    net.run(["attach", "a"], ["detach", "a"])
    assert net.forward() == "1" and net.bridge not in net.links()


def test_what_banger_did_not_create_is_left_alone(net):
    net.sh("ip", "link", "add", "name", net.bridge, "type", "bridge")  # someone's bridge, our name
    subprocess.run(["ip", "netns", "exec", net.ns, "nft", "-f", "-"], check=True, text=True,
                   input="table ip other {\n chain post {\n type nat hook postrouting priority srcnat;\n"
                         " ip saddr 10.9.0.0/24 masquerade\n }\n}\n")
    foreign_tap = tap_name(net.bridge, "x")
    net.sh("ip", "tuntap", "add", "dev", foreign_tap, "mode", "tap")
    net.sh("ip", "link", "set", "dev", foreign_tap, "alias", "not banger")

    attached, detached, cleaned = net.run(["attach", "a"], ["detach", "a"], ["cleanup"])
    assert "exists and banger did not create it" in attached["error"] and "bridge.name" in attached["error"]
    assert "\n" not in attached["error"]
    assert detached is None and cleaned == []
    links = net.links()
    assert net.bridge in links and foreign_tap in links and net.addresses(net.bridge) == []
    assert "ip saddr 10.9.0.0/24 masquerade" in net.sh("nft", "list", "table", "ip", "other").stdout
    net.sh("ip", "link", "delete", "dev", net.bridge)

    lease, refused = net.run(["attach", "a"], ["attach", "x"])  # our bridge now; x's tap name is taken
    assert "error" not in lease
    assert f"an interface {foreign_tap} exists that banger did not create" in refused["error"]
    net.run(["detach", "a"])
    links = net.links()
    assert net.bridge not in links and foreign_tap in links
    assert net.table_text() is None and "masquerade" in net.sh("nft", "list", "table", "ip", "other").stdout


def test_a_crash_before_the_lease_is_written_leaves_no_lease_and_the_tap_is_reclaimed(net):
    a, crashed, leases, status = net.run(["attach", "a"], ["attach_crash", "b"], ["leases"], ["status"])
    tap_b = tap_name(net.bridge, "b")
    assert crashed == "crashed" and set(leases) == {"a"}
    assert status["taps_without_lease"] == [tap_b]
    again, = net.run(["attach", "b"])  # the next attach of b adopts the tap the crash left
    assert again["tap"] == tap_b and net.links()[tap_b]["master"] == net.bridge

    net.run(["attach_crash", "c"])
    removed, = net.run(["cleanup", "a", "b", "c"])  # every VM kept: only the unleased tap goes
    assert removed == [f"tap {tap_name(net.bridge, 'c')} of VM c (no lease)"]
    # a tap made by a crash between `ip tuntap add` and naming it is adopted too
    tap_d = tap_name(net.bridge, "d")
    net.sh("ip", "tuntap", "add", "dev", tap_d, "mode", "tap")
    d, = net.run(["attach", "d"])
    assert d["tap"] == tap_d and net.links()[tap_d].get("ifalias") == f"banger:{net.bridge}:d"
    assert a["address"] != again["address"] != d["address"]


def test_cleanup_drops_the_leases_of_vms_that_are_gone_and_tears_down_after_the_last(net):
    a, b = net.run(["attach", "a"], ["attach", "b"])
    removed, leases = net.run(["cleanup", "a"], ["leases"])
    assert removed == [f"tap {b['tap']} of VM b", f"lease of VM b ({b['address']})"]
    assert set(leases) == {"a"} and b["tap"] not in net.links()
    removed, = net.run(["cleanup"])
    assert removed[:2] == [f"tap {a['tap']} of VM a", f"lease of VM a ({a['address']})"]
    assert f"bridge {net.bridge}" in removed and f"nft table ip {net.table}" in removed
    assert net.bridge not in net.links() and net.table_text() is None


def test_concurrent_attaches_get_distinct_addresses(net):
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda vm: net.run(["attach", vm])[0], ["a", "b", "c", "d"]))
    assert sorted(r["address"] for r in results) == [f"172.30.0.{i}/24" for i in (2, 3, 4, 5)]
    assert len(net.run(["leases"])[0]) == 4


def test_a_changed_subnet_waits_until_no_vm_holds_a_lease_from_the_old_one(net):
    net.run(["attach", "a"])
    refused, = net.run(["attach", "b"], subnet="10.77.0.0/24")
    assert "VMs a hold leases on bridge" in refused["error"] and "bridge.subnet 10.77.0.0/24" in refused["error"]
    net.run(["detach", "a"], subnet="10.77.0.0/24")  # tears down what was really set up
    assert net.bridge not in net.links() and net.table_text() is None
    b, = net.run(["attach", "b"], subnet="10.77.0.0/24")
    assert (b["address"], b["gateway"]) == ("10.77.0.2/24", "10.77.0.1")
    assert net.addresses(net.bridge) == ["10.77.0.1/24"]
    assert f'ip saddr 10.77.0.0/24 oifname != "{net.bridge}" masquerade' in net.table_text()
    net.run(["detach", "b"], subnet="10.77.0.0/24")


@pytest.fixture
def fake_resolvectl(tmp_path):
    """A `resolvectl` first on PATH that records each call's arguments, one line each."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "resolvectl.calls"
    bin_dir.mkdir()
    (bin_dir / "resolvectl").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    (bin_dir / "resolvectl").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return env, calls


def test_with_systemd_resolved_name_vm_resolves_at_the_gateway_until_the_bridge_goes(net, fake_resolvectl):
    env, calls = fake_resolvectl
    a, b, status = net.run(["attach", "vm-a", True], ["attach", "vm-b", True], ["status"], env=env)
    responder = status["names"]["responder"]
    assert responder and status["names"]["resolvectl"] == net.bridge
    assert json.loads((net.state / "network" / "host.json").read_text())["names"]["responder"] == responder
    assert net.sh("cat", f"/proc/{responder['pid']}/cmdline").stdout.split("\0")[-3:-1] == ["172.30.0.1", "53"]
    assert calls.read_text().splitlines()[:2] == [f"dns {net.bridge} 172.30.0.1", f"domain {net.bridge} ~vm"]
    assert len(set(calls.read_text().splitlines())) == 2  # the second attach reused the responder

    def ask(name: str, qtype: str = "A") -> dict:
        out = net.sh(sys.executable, "-c", "import runpy, sys; sys.path.insert(0, sys.argv[1]); "
                     "sys.argv = sys.argv[1:]; runpy.run_module('tests.net.dnsq', run_name='__main__')",
                     str(REPO), "172.30.0.1", "53", name, qtype).stdout
        return json.loads(out)

    assert ask("vm-a.vm")["answers"][0]["data"] == a["address"].split("/")[0]
    assert ask("vm-b.vm")["answers"][0]["data"] == b["address"].split("/")[0]
    assert ask("vm-c.vm")["rcode"] == 3 and ask("example.com")["rcode"] == 5

    net.run(["detach", "vm-a"], env=env)
    assert ask("vm-a.vm")["rcode"] == 3  # the lease went: so did the name
    net.run(["detach", "vm-b"], env=env)
    assert calls.read_text().splitlines()[-1] == f"revert {net.bridge}"
    assert vmdns.start_time(responder["pid"]) != responder["started"]  # stopped
    assert not (net.state / "network" / "host.json").exists() and net.bridge not in net.links()


def test_without_systemd_resolved_no_responder_is_started(net, fake_resolvectl):
    env, calls = fake_resolvectl
    status, = net.run(["attach", "a"], ["status"], env=env)[1:]  # detection: no resolved in a test's netns
    assert status["names"] == {"responder": None, "resolvectl": None} and not calls.exists()
    assert "names" not in json.loads((net.state / "network" / "host.json").read_text())
    assert not (net.state / "network" / "names.log").exists()
    net.run(["attach", "b", False], ["detach", "a"], ["detach", "b"], env=env)
    assert not calls.exists()


def test_a_failing_resolvectl_is_a_logged_warning_not_a_failed_vm(net, fake_resolvectl, tmp_path):
    env, calls = fake_resolvectl
    (tmp_path / "bin" / "resolvectl").write_text(f'#!/bin/sh\necho "$*" >> {calls}\necho "no such link" >&2\nexit 1\n')
    a, = net.run(["attach", "a", True], env=env)
    assert "error" not in a and net.bridge in net.links()
    log = (net.state / "network" / "names.log").read_text()
    assert f"NAME.vm will not resolve: `resolvectl dns {net.bridge} 172.30.0.1` failed: no such link" in log
    net.run(["detach", "a"], env=env)  # the revert fails too: ignored, everything goes
    assert calls.read_text().splitlines()[-1] == f"revert {net.bridge}" and net.bridge not in net.links()
    assert not (net.state / "network" / "host.json").exists()
