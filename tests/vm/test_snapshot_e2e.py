"""VMs restored from a snapshot, end to end: real QEMU under TCG, the real Debian test image, the
user's own `ssh NAME.vm`. The first `vm create` of a shape makes the snapshot, the next ones find
it cached; VMs restored from it at the same time are each their own machine (host name, machine
id, host key, boot id, disk) with the host's clock; `build … snapshot=yes` pre-warms the default
shape's (a template edit would remake it); a truncated memory file is dropped with one warning
line and the VM boots cold.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time

import pytest

from banger.rootfs import guest_assets
from tests.support_tools import REPO
from tests.vm.test_vm_e2e import banger, env, record, ssh  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow
SHAPE = ["--vcpus", "1", "--memory", "768M"]
BUILD = ["name=vmtest", "boot=no", "snapshot=yes"]


def test_restored_vms_are_each_their_own_machine(env, debian_image_ref):
    # vm create with no snapshot for its shape makes it first (here: 1 vCPU, 768 MiB)
    first = banger(env["vars"], "vm", "create", "vmtest", "--name", "snap-a", *SHAPE, timeout=900)
    assert "snapshot: booting the image once" in first.stderr
    assert "(restored)" in first.stderr, first.stderr
    # the second finds the snapshot step cached and only restores; two more restore concurrently
    results = {}

    def create(name):
        results[name] = banger(env["vars"], "vm", "create", "vmtest", "--name", name, *SHAPE, check=False)

    threads = [threading.Thread(target=create, args=(n,)) for n in ("snap-b", "snap-c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, proc in results.items():
        assert proc.returncode == 0, proc.stderr
        assert "snapshot: booting" not in proc.stderr and "(restored)" in proc.stderr
    snaps = {record(env, n)["snapshot"] for n in ("snap-a", "snap-b", "snap-c")}
    assert len(snaps) == 1 and snaps != {""}

    facts = {}
    for name in ("snap-a", "snap-b", "snap-c"):
        before = time.time()
        out = ssh(env, name, "hostname; cat /etc/machine-id /proc/sys/kernel/random/boot_id; "
                             "cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub; date +%s.%N").stdout.split()
        after = time.time()
        hostname, machine_id, boot_id, host_key, clock = out
        assert hostname == name
        assert machine_id == record(env, name)["id"]
        assert record(env, name)["host_key"].split()[1] == host_key  # the key banger pinned
        # the guest's clock was set from the host's at restore (it stood still in the saved state)
        assert before - 2 <= float(clock) <= after + 2, (before, clock, after)
        facts[name] = (machine_id, boot_id, host_key)
    for i in range(3):  # every identity differs between every two clones
        assert len({f[i] for f in facts.values()}) == 3, facts

    # their disks are their own: a write in one is absent in the other, and survives a cold restart
    ssh(env, "snap-b", "echo only-b > /root/mark && sync")
    assert ssh(env, "snap-c", "cat /root/mark", check=False).returncode != 0
    banger(env["vars"], "vm", "restart", "snap-b", timeout=900)
    assert ssh(env, "snap-b", "cat /root/mark; hostname").stdout.split() == ["only-b", "snap-b"]
    banger(env["vars"], "vm", "rm", "--force", "snap-a", "snap-b", "snap-c")


def test_build_snapshot_yes_prewarms_what_vm_create_restores_and_a_template_edit_remakes_it(
        env, debian_image_ref, tmp_path):
    made = banger(env["vars"], "build", f"image={debian_image_ref}", *BUILD, "--json", timeout=900)
    assert [s["status"] for s in json.loads(made.stdout)["steps"] if s["step"] == "snapshot"] == ["ran"]
    again = banger(env["vars"], "build", f"image={debian_image_ref}", *BUILD, "--json")
    assert [s["status"] for s in json.loads(again.stdout)["steps"] if s["step"] == "snapshot"] == ["cached"]
    # it has vm create's default shape: a default VM restores from it without making one
    created = banger(env["vars"], "vm", "create", "vmtest", "--name", "snap-d", timeout=900)
    assert "snapshot: booting" not in created.stderr and "(restored)" in created.stderr
    assert ssh(env, "snap-d", "hostname").stdout.strip() == "snap-d"
    banger(env["vars"], "vm", "rm", "--force", "snap-d")
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates", templates)
    agent = templates / "agent.sh.j2"
    agent.write_text(agent.read_text() + "\n# an edit\n")
    edited = {s["step"]: s for s in json.loads(banger({**env["vars"], "BANGER_TEMPLATES_DIR": str(templates)},
                                                      "build", f"image={debian_image_ref}", *BUILD,
                                                      "--explain", "--json").stdout)["steps"]}
    assert edited["inject"]["status"] == "will-run" and edited["snapshot"]["status"] == "will-run"
    assert "inject" in edited["snapshot"]["why"]


def test_a_truncated_memory_file_is_dropped_and_the_vm_boots_cold(env):
    banger(env["vars"], "vm", "create", "vmtest", "--name", "snap-u", *SHAPE, timeout=900)
    snap_key = record(env, "snap-u")["snapshot"]
    assert snap_key
    cache = env["root"] / "cache"
    snap = json.loads((cache / "actions" / snap_key[:2] / f"{snap_key}.json").read_text())
    memory = cache / "blobs" / "blake3" / snap["outputs"]["memory"].split(":", 1)[1]
    memory.chmod(0o644)
    with open(memory, "r+b") as f:
        f.truncate(memory.stat().st_size // 2)
    proc = banger(env["vars"], "vm", "create", "vmtest", "--name", "snap-v", *SHAPE, timeout=900)
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and re.search(r"snapshot \w+ failed verification .*dropped it, booting snap-v cold", warnings[0])
    assert record(env, "snap-v")["snapshot"] == "" and record(env, "snap-v")["state"] == "running"
    assert ssh(env, "snap-v", "hostname").stdout.strip() == "snap-v"
    assert not (cache / "actions" / snap_key[:2] / f"{snap_key}.json").exists()  # dropped
    assert guest_assets.SNAPSHOT_WORD not in ssh(env, "snap-v", "cat /proc/cmdline").stdout
    banger(env["vars"], "vm", "rm", "--force", "snap-u", "snap-v")


def test_a_snapshot_qemu_cannot_load_is_dropped_and_the_vm_boots_cold(env, tmp_path):
    """Here a `zstd` that fails stands in for a state QEMU cannot read (another QEMU's, a damaged
    stream past its checksum): QEMU's load fails, banger says so in one line and boots cold."""
    banger(env["vars"], "vm", "create", "vmtest", "--name", "snap-w", *SHAPE, timeout=900)  # a snapshot exists
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "zstd").write_text("#!/bin/sh\necho 'zstd: broken on purpose' >&2\nexit 1\n")
    (fake / "zstd").chmod(0o755)
    broken = {**env["vars"], "PATH": f"{fake}:{os.environ['PATH']}"}
    proc = banger(broken, "vm", "create", "vmtest", "--name", "snap-x", *SHAPE, timeout=900)
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and re.search(r"did not restore .*load.*dropped it, booting snap-x cold", warnings[0]), \
        proc.stderr
    rec = record(env, "snap-x")
    assert rec["snapshot"] == "" and rec["state"] == "running" and "snapshot-disk" not in rec["artifacts"]
    assert ssh(env, "snap-x", "hostname").stdout.strip() == "snap-x"
    banger(env["vars"], "vm", "rm", "--force", "snap-w", "snap-x")
