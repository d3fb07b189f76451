"""banger.net without root: settings validation, address allocation, tap names and MACs, the
lease file, DNS choice, and one-line errors (from commands, and for a user who is not root)."""
from __future__ import annotations

import json
import re
import sys

import pytest

from banger.net import bridge, dns, host, store
from banger.net.settings import BridgeSettings, Lease, NetError, allocate, mac_for, make_lease, tap_name

EXAMPLE = '"bridge": {"name": "banger0", "subnet": "172.30.0.0/24"}'


def test_defaults_and_what_follows_from_them():
    s = BridgeSettings.from_config({})
    assert s == BridgeSettings() == BridgeSettings.from_config({"bridge": None})
    assert (s.name, s.subnet, str(s.gateway), s.gateway_cidr) == ("banger0", "172.30.0.0/24", "172.30.0.1",
                                                                 "172.30.0.1/24")
    assert s.table == "banger_banger0"
    custom = BridgeSettings.from_config({"bridge": {"name": "vmbr1", "subnet": "10.44.0.0/16"}, "other": 1})
    assert (custom.name, custom.gateway_cidr, custom.table) == ("vmbr1", "10.44.0.1/16", "banger_vmbr1")
    assert BridgeSettings.from_config({"bridge": {"subnet": "192.168.77.8/29"}}).gateway_cidr == "192.168.77.9/29"


@pytest.mark.parametrize("section, key, why", [
    ({"subnet": "172.30.0.1/24"}, "bridge.subnet", "not an IPv4 network"),  # host bits set
    ({"subnet": "172.30.0.0/30"}, "bridge.subnet", "too small"),
    ({"subnet": "fd00::/64"}, "bridge.subnet", "not an IPv4 network"),
    ({"subnet": "banana"}, "bridge.subnet", "not an IPv4 network"),
    ({"subnet": "127.0.0.0/24"}, "bridge.subnet", "not a usable"),
    ({"subnet": "224.0.0.0/24"}, "bridge.subnet", "not a usable"),
    ({"subnet": 24}, "bridge.subnet", "must be a string"),
    ({"name": "a-name-longer-than-15"}, "bridge.name", "not a usable interface name"),
    ({"name": "br0; rm"}, "bridge.name", "not a usable interface name"),
    ({"name": ""}, "bridge.name", "not a usable interface name"),
    ({"name": "bgt0"}, "bridge.name", "may not start with 'bgt'"),
    ({"nmae": "x"}, "bridge.nmae", "is not a setting"),
])
def test_bad_settings_are_one_line_naming_the_key_and_an_example(section, key, why):
    with pytest.raises(NetError) as info:
        BridgeSettings.from_config({"bridge": section})
    message = str(info.value)
    assert key in message and why in message and EXAMPLE in message and "\n" not in message


def test_a_bridge_section_that_is_not_an_object_is_refused():
    with pytest.raises(NetError, match="bridge must be an object"):
        BridgeSettings.from_config({"bridge": "banger0"})


def test_allocation_takes_the_lowest_free_address_after_the_gateway():
    s = BridgeSettings()
    assert allocate(s, []) == "172.30.0.2/24"
    assert allocate(s, ["172.30.0.2/24", "172.30.0.3/24"]) == "172.30.0.4/24"
    assert allocate(s, ["172.30.0.3/24", "172.30.0.5/24"]) == "172.30.0.2/24"  # a freed gap is reused
    small = BridgeSettings(subnet="10.0.0.0/29")  # hosts .1-.6: the gateway and five VMs
    taken = [f"10.0.0.{i}/29" for i in range(2, 7)]
    assert allocate(small, taken[:-1]) == "10.0.0.6/29"
    with pytest.raises(NetError, match=r"no free address left in bridge.subnet 10.0.0.0/29 \(5 leases\)"):
        allocate(small, taken)


def test_tap_names_and_macs_are_stable_short_and_banger_s():
    name = tap_name("banger0", "web")
    assert re.fullmatch(r"bgt[0-9a-f]{8}", name) and len(name) <= 15
    assert name == tap_name("banger0", "web") != tap_name("banger0", "web2") != tap_name("other0", "web")
    mac = mac_for("172.30.0.2/24")
    assert mac == "06:00:ac:1e:00:02" == mac_for("172.30.0.2")
    first = int(mac.split(":")[0], 16)
    assert first & 0b10 and not first & 0b1  # locally administered, unicast
    lease = make_lease(BridgeSettings(), "web", "172.30.0.7/24", "10.0.0.53")
    assert lease == Lease(vm="web", address="172.30.0.7/24", gateway="172.30.0.1", tap=name,
                          mac="06:00:ac:1e:00:07", dns="10.0.0.53")


def test_the_lease_file_round_trips_and_is_written_atomically(tmp_path):
    s = BridgeSettings()
    leases = {"b": make_lease(s, "b", "172.30.0.3/24", None), "a": make_lease(s, "a", "172.30.0.2/24", "1.1.1.1")}
    with store.locked(tmp_path):
        store.save_leases(tmp_path, leases)
    assert store.load_leases(tmp_path) == leases == bridge.leases(tmp_path)
    d = tmp_path / "network"
    assert sorted(p.name for p in d.iterdir()) == ["leases.json", "lock"]  # no temporary file left
    assert json.loads((d / "leases.json").read_text())["leases"]["a"]["dns"] == "1.1.1.1"
    store.save_leases(tmp_path, {})
    assert store.load_leases(tmp_path) == {} and not (d / "leases.json").exists()
    (d / "leases.json").write_text("{not json")
    with pytest.raises(NetError, match="leases.json in the network state is unreadable"):
        store.load_leases(tmp_path)


def test_the_guest_gets_the_first_nameserver_that_is_not_loopback(tmp_path):
    assert dns.usable("# c\nnameserver 127.0.0.53\noptions edns0\n") is None
    assert dns.usable("nameserver 127.0.0.1\nnameserver ::1\nnameserver fe80::1%eth0\n"
                      "nameserver 2001:db8::1\nnameserver 10.2.3.4 # lan\nnameserver 9.9.9.9\n") == "10.2.3.4"
    stub, upstreams = tmp_path / "resolv.conf", tmp_path / "upstreams.conf"
    stub.write_text("nameserver 127.0.0.53\n")
    assert dns.guest_dns(stub, upstreams) is None
    upstreams.write_text("nameserver 192.0.2.53\n")
    assert dns.guest_dns(stub, upstreams) == "192.0.2.53"
    stub.write_text("nameserver 198.51.100.1\n")
    assert dns.guest_dns(stub, upstreams) == "198.51.100.1"


def test_dns_status_is_one_line(tmp_path):
    line = dns.dns_status(tmp_path / "absent-socket")
    assert line == "NAME.vm resolves only through ssh's config (no systemd-resolved here)"
    assert "\n" not in dns.dns_status()


def test_a_failing_command_is_a_one_line_net_error():
    with pytest.raises(NetError) as info:
        host.run([sys.executable, "-c", "import sys; sys.stderr.write('\\nRTNETLINK: bad thing\\nmore\\n'); "
                                        "sys.exit(2)"])
    assert str(info.value).endswith("failed: RTNETLINK: bad thing") and "\n" not in str(info.value)
    with pytest.raises(NetError, match="is not installed"):
        host.run(["banger-no-such-tool"])


def test_the_nat_ruleset_names_only_banger_s_table():
    text = host.nat_ruleset(BridgeSettings(name="vmbr1", subnet="10.44.0.0/16"))
    assert set(re.findall(r"table ip (\S+)", text)) == {"banger_vmbr1"}
    assert 'ip saddr 10.44.0.0/16 oifname != "vmbr1" masquerade' in text


def test_without_root_attach_says_so_and_teardown_of_nothing_is_a_no_op(tmp_path, monkeypatch):
    monkeypatch.setattr(bridge.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(host.os, "geteuid", lambda: 1000)
    with pytest.raises(NetError) as info:
        bridge.attach(tmp_path, BridgeSettings(), "web")
    assert str(info.value) == "bridge networking needs root: run as root or use --net user"
    assert bridge.detach(tmp_path, BridgeSettings(), "web") is None
    assert bridge.cleanup(tmp_path, BridgeSettings(), lambda vm: False) == []
    assert not (tmp_path / "network").exists()


@pytest.mark.parametrize("vm", ["", "a:b", "line\nbreak", "x" * 201])
def test_vm_names_that_cannot_name_a_lease_are_refused(tmp_path, vm):
    with pytest.raises(NetError, match="cannot name a network lease"):
        bridge.attach(tmp_path, BridgeSettings(), vm)
