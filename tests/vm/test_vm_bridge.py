"""`banger vm create --net bridge` end to end, as root, entirely inside a network namespace the test
creates (`ip netns add banger-test-<random>`): the bridge, the tap, banger's nft table and the QEMU
process (under TCG) all live there, and so does every `banger vm` command and `ssh` of this test.
The image is built outside (the test registry listens on the host's loopback, which the namespace
cannot reach). The namespace has no route out: packets the guest sends beyond the bridge (DNS,
NTP) die there, and outbound NAT is only read from the ruleset, never exercised.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from banger.core import procs
from banger.core.config import volatile_trees_dir
from banger.core.fsutil import remove_tree
from banger.net.settings import tap_name
from tests.support_netns import ns_pids, own_namespace
from tests.support_kernel import vm_home
from tests.support_tools import REPO, need

pytestmark = pytest.mark.slow
SUBNET = "172.30.0.0/24"
SMALL = ["--vcpus", "1", "--memory", "768M"]


@pytest.fixture(scope="module")
def netns():
    with own_namespace("bridge-mode VMs") as name:
        yield name


@pytest.fixture(scope="module")
def env(netns, tmp_path_factory, debian_bundle, debian_image_ref):
    need("qemu-system-x86_64", "qemu-img", "ssh", "mkfs.ext4", "debugfs")
    root = tmp_path_factory.mktemp("bridge-vms")
    values = vm_home(root, debian_bundle)
    state = root / "state" / "banger"
    bridge = f"bng{secrets.token_hex(4)}"  # not "bgt...": that prefix is the taps'
    (root / "config" / "banger").mkdir(parents=True)
    (root / "config" / "banger" / "config.json").write_text(
        json.dumps({"bridge": {"name": bridge, "subnet": SUBNET}}))
    e = Env(netns, values, root, state, bridge)
    e.banger("build", f"image={debian_image_ref}", "name=vmtest", "boot=no", inside=False)
    yield e
    e.banger("vm", "rm", "--force", "br1", check=False)
    e.assert_host_untouched()
    ram = volatile_trees_dir((root / "cache").resolve())
    if ram is not None:
        remove_tree(ram)


class Env:
    def __init__(self, ns: str, values: dict, root: Path, state: Path, bridge: str):
        self.ns, self.vars, self.root, self.state, self.bridge = ns, values, root, state, bridge
        self.ssh_config = root / "ssh_config"
        self.table = f"banger_{bridge}"

    def inside(self, *argv: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        """A command in the test's namespace, with the test's banger environment."""
        proc = subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True, text=True,
                              env={**os.environ, **self.vars}, cwd=REPO, timeout=timeout, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0 or not check, f"{argv} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        return proc

    def banger(self, *args: str, inside: bool = True, check: bool = True, timeout: float = 600):
        argv = [sys.executable, "-m", "banger", *args]
        if inside:
            return self.inside(*argv, timeout=timeout, check=check)
        proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **self.vars}, cwd=REPO,
                              timeout=timeout)
        assert proc.returncode == 0 or not check, f"banger {args} failed:\n{proc.stderr[-3000:]}"
        return proc

    def ssh(self, name: str, command: str) -> str:
        """The user's own `ssh NAME.vm`, reading only the config banger manages."""
        return self.inside("ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", f"{name}.vm", command).stdout

    def record(self, name: str) -> dict:
        return json.loads((self.state / "vms" / name / "vm.json").read_text())

    def links(self) -> dict[str, dict]:
        out = self.inside("ip", "-j", "-d", "link", "show").stdout
        return {d["ifname"]: d for d in json.loads(out) if d.get("ifname")}

    def ruleset(self) -> str:
        return self.inside("nft", "list", "ruleset").stdout

    def leases(self) -> dict:
        path = self.state / "network" / "leases.json"
        return json.loads(path.read_text())["leases"] if path.exists() else {}

    def assert_host_untouched(self) -> None:
        host_link = subprocess.run(["ip", "link", "show", "dev", self.bridge], capture_output=True, text=True)
        assert host_link.returncode != 0, f"{self.bridge} exists in the host's namespace"
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        assert tap_name(self.bridge, "br1") not in links
        tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
        assert self.table not in tables


@pytest.fixture(scope="module")
def br1(env):
    proc = env.banger("vm", "create", "vmtest", "--net", "bridge", "--name", "br1", *SMALL)
    assert f"ssh -F {env.ssh_config} br1.vm" in proc.stdout, proc.stdout
    env.created = proc.stderr
    return "br1"


def test_a_bridge_vm_is_reached_over_ssh_at_its_leased_address(env, br1):
    rec = env.record(br1)
    assert rec["net"] == "bridge" and rec["state"] == "running"
    assert (rec["address"], rec["ssh_port"]) == ("172.30.0.2", 22)
    lease = env.leases()[br1]
    assert lease["address"] == "172.30.0.2/24" and lease["tap"] == tap_name(env.bridge, br1)
    # the managed ssh config names the VM's own address, port 22
    resolved = env.inside("ssh", "-G", "-F", str(env.ssh_config), f"{br1}.vm").stdout.splitlines()
    assert "hostname 172.30.0.2" in resolved and "port 22" in resolved
    assert env.ssh(br1, "hostname").strip() == br1
    # sshd saw the connection come from the bridge's gateway, to the leased address
    client, _, server, port = env.ssh(br1, "echo $SSH_CONNECTION").split()
    assert (client, server, port) == ("172.30.0.1", "172.30.0.2", "22")
    shown = env.banger("vm", "ssh", br1, "--", "ip", "-4", "addr").stdout
    assert "inet 172.30.0.2/24" in shown
    # it was restored from the image's snapshot (made with user-mode networking): the NIC took the
    # lease's MAC and dropped the snapshot's address as it resumed
    assert rec["snapshot"], f"a bridge VM is restored from the image's snapshot too:\n{env.created}"
    assert "10.0.2.15" not in shown
    assert f"link/ether {lease['mac']}" in env.banger("vm", "ssh", br1, "--", "ip", "-o", "link").stdout
    rows = {r["name"]: r for r in json.loads(env.banger("vm", "list", "--json").stdout)}
    assert rows[br1]["address"] == "172.30.0.2"


def test_the_bridge_tap_nat_and_vmm_all_live_in_the_namespace(env, br1):
    rec = env.record(br1)
    links = env.links()
    tap = tap_name(env.bridge, br1)
    assert links[env.bridge]["linkinfo"]["info_kind"] == "bridge" and "UP" in links[env.bridge]["flags"]
    assert links[tap]["master"] == env.bridge and "UP" in links[tap]["flags"]
    assert rec["vmm_pid"] in ns_pids(env.ns)
    assert f"tap,id=net0,ifname={tap}," in Path(f"/proc/{rec['vmm_pid']}/cmdline").read_text()
    rules = env.ruleset()
    assert f"table ip {env.table}" in rules
    assert f'ip saddr {SUBNET} oifname != "{env.bridge}" masquerade' in rules
    assert env.inside("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    # nothing routes out of the namespace: the guest's DNS/NTP packets end here
    assert "default" not in env.inside("ip", "-4", "route", "show").stdout
    env.assert_host_untouched()


def test_stop_removes_the_tap_and_keeps_the_lease_then_start_gets_the_same_address(env, br1):
    rec = env.record(br1)
    out = env.banger("vm", "stop", br1).stdout
    assert f"{br1}: stopped" in out and "forced" not in out, out  # the guest powered off over the bridge
    assert not procs.alive(rec["vmm_pid"], rec["vmm_start"])
    links = env.links()
    assert tap_name(env.bridge, br1) not in links and env.bridge in links  # the bridge stays for the lease
    assert env.leases()[br1]["address"] == "172.30.0.2/24"
    assert env.record(br1)["state"] == "stopped"

    env.banger("vm", "start", br1)
    rec = env.record(br1)
    assert rec["state"] == "running" and rec["address"] == "172.30.0.2" and rec["boots"] == 2
    assert tap_name(env.bridge, br1) in env.links()
    assert env.ssh(br1, "hostname").strip() == br1


def test_rm_leaves_no_tap_bridge_table_lease_process_dir_or_ssh_entry(env, br1):
    rec = env.record(br1)
    env.banger("vm", "rm", "--force", br1)
    links = env.links()
    assert env.bridge not in links and not any(n.startswith("bgt") for n in links)
    assert env.table not in env.ruleset()
    assert not (env.state / "network" / "leases.json").exists()
    assert not (env.state / "network" / "host.json").exists()
    assert not procs.alive(rec["vmm_pid"], rec["vmm_start"])
    assert ns_pids(env.ns) == []  # no QEMU, no keeper: nothing runs in the namespace any more
    assert not (env.state / "vms" / br1).exists()
    config = env.ssh_config.read_text() if env.ssh_config.exists() else ""
    assert f"{br1}.vm" not in config
    known = env.state / "ssh" / "known_hosts"
    assert f"{br1}.vm" not in (known.read_text() if known.exists() else "")
    assert env.banger("vm", "list", "--all", "--quiet").stdout.split() == []
    env.assert_host_untouched()
