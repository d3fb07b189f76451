"""`banger vm` end to end: real QEMU under TCG, the real Debian test image, the real `ssh` through
the managed config. Two VMs made concurrently, each its own machine; data kept over stop/start;
crashes and killed creates reconciled; rm leaves nothing behind; gc keeps what a VM's disk needs.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from banger.core import procs
from banger.core.config import volatile_trees_dir
from banger.core.fsutil import remove_tree
from tests.support_tools import REPO, need
from tests.support_kernel import vm_home

pytestmark = pytest.mark.slow
SMALL = ["--vcpus", "1", "--memory", "768M"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, debian_bundle, debian_image_ref):
    need("qemu-system-x86_64", "qemu-img", "ssh", "mkfs.ext4", "debugfs")
    root = tmp_path_factory.mktemp("vms")
    values = vm_home(root, debian_bundle)
    state = root / "state" / "banger"
    banger(values, "build", f"image={debian_image_ref}", "name=vmtest", "boot=no")
    yield {"vars": values, "root": root, "state": state, "ssh_config": root / "ssh_config"}
    subprocess.run([sys.executable, "-m", "banger", "vm", "rm", "--force",
                    *names(values, "--all")], env={**os.environ, **values}, cwd=REPO, capture_output=True)
    ram = volatile_trees_dir((root / "cache").resolve())
    if ram is not None:
        remove_tree(ram)


def banger(env_vars, *args, timeout=600, check=True):
    proc = subprocess.run([sys.executable, "-m", "banger", *args], capture_output=True, text=True,
                          env={**os.environ, **env_vars}, cwd=REPO, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"banger {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


def names(env_vars, *flags) -> list[str]:
    return banger(env_vars, "vm", "list", "--quiet", *flags).stdout.split()


def listing(env) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads(banger(env["vars"], "vm", "list", "--all", "--json").stdout)}


def ssh(env, name, command, check=True):
    """The user's own `ssh NAME.vm`, reading only the config banger manages."""
    proc = subprocess.run(["ssh", "-F", str(env["ssh_config"]), "-o", "BatchMode=yes", f"{name}.vm", command],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if check:
        assert proc.returncode == 0, f"ssh {name}.vm {command!r}: {proc.returncode} {proc.stderr}"
    return proc


def record(env, name) -> dict:
    return json.loads((env["state"] / "vms" / name / "vm.json").read_text())


def vmm_processes(name_fragment: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"qemu-system.*{name_fragment}"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.fixture(scope="module")
def pair(env):
    """Two VMs created at once from one image."""
    extra = {"alpha": [], "beta": ["--disk-size", "2G"]}
    procs = [subprocess.Popen([sys.executable, "-m", "banger", "vm", "create", "vmtest", "--name", n, *SMALL, *extra[n]],
                              env={**os.environ, **env["vars"]}, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in ("alpha", "beta")]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        assert "ssh " in out and ".vm" in out, out
    return ("alpha", "beta")


def test_two_vms_created_concurrently_are_running_and_reachable_as_name_vm(env, pair):
    rows = listing(env)
    for name in pair:
        assert rows[name]["state"] == "running", rows[name]
        assert rows[name]["address"].startswith("127.0.0.1:")
        assert rows[name]["image"] == "vmtest"
        assert ssh(env, name, "hostname").stdout.strip() == name
    assert sorted(names(env["vars"])) == sorted(pair)
    assert names(env["vars"], "--latest") in (["alpha"], ["beta"])
    # `banger ps` is the same list
    assert banger(env["vars"], "ps", "--quiet").stdout.split() == names(env["vars"])


def test_each_vm_is_its_own_machine_and_disk(env, pair):
    a, b = pair
    ids = {n: ssh(env, n, "cat /etc/machine-id").stdout.strip() for n in pair}
    keys = {n: ssh(env, n, "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1] for n in pair}
    assert ids[a] != ids[b] and len(ids[a]) == 32
    assert keys[a] != keys[b]
    assert ids[a] == record(env, a)["id"]
    assert record(env, a)["host_key"].split()[1] == keys[a]  # the key banger pinned is the guest's
    ssh(env, a, "echo kept > /root/marker && sync")
    assert ssh(env, b, "test -e /root/marker", check=False).returncode == 1
    # the CAS image is untouched: the disks are overlays over it (restored VMs': over the snapshot's
    # frozen disk layer, itself an overlay over the image)
    chain = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-U", "--backing-chain",
                                       str(env["state"] / "vms" / a / "disk.qcow2")],
                                      capture_output=True, text=True, check=True).stdout)
    assert [c["format"] for c in chain] == ["qcow2", "qcow2", "raw"]
    assert record(env, a)["snapshot"] and chain[-1]["filename"].startswith(str(env["root"] / "cache" / "blobs"))


def test_disk_size_grows_the_disk_and_the_guest_filesystem(env, pair):
    sizes = {n: int(ssh(env, n, "df -B1 --output=size / | tail -1").stdout) for n in pair}
    assert sizes["beta"] > 1.8 * 2**30, sizes  # --disk-size 2G: grown at first boot
    assert sizes["alpha"] < 1.1 * 2**30, sizes  # the image's own size (1 GiB)
    assert record(env, "beta")["grow"] is False  # done once


def test_logs_show_the_console(env, pair):
    out = banger(env["vars"], "vm", "logs", pair[0]).stdout
    assert "BANGER_READY" in out and f"banger-identity: {pair[0]}" in out
    assert len(banger(env["vars"], "vm", "logs", pair[0], "-n", "3").stdout.splitlines()) <= 3


def test_banger_vm_ssh_passes_the_exit_code_through(env, pair):
    proc = banger(env["vars"], "vm", "ssh", pair[0], "--", "sh", "-c", "echo out; exit 7", check=False)
    assert proc.returncode == 7 and proc.stdout.strip() == "out"


def test_stop_then_start_keeps_the_data(env, pair):
    a = pair[0]
    out = banger(env["vars"], "vm", "stop", a).stdout
    assert "stopped" in out
    row = listing(env)[a]
    assert row["state"] == "stopped" and vmm_processes(f"banger-{a}") == []
    assert a not in names(env["vars"])
    banger(env["vars"], "vm", "start", a)
    assert ssh(env, a, "cat /root/marker").stdout.strip() == "kept"
    assert record(env, a)["boots"] == 2


def test_restart_boots_the_same_machine_again(env, pair):
    b = pair[1]
    key = record(env, b)["host_key"]
    banger(env["vars"], "vm", "restart", b)
    rec = record(env, b)
    assert rec["state"] == "running" and rec["boots"] == 2 and rec["host_key"] == key  # same identity
    assert ssh(env, b, "hostname").stdout.strip() == b


def test_a_killed_vmm_is_reported_crashed_with_the_reason(env, pair):
    b = pair[1]
    rec = record(env, b)
    assert procs.alive(rec["vmm_pid"], rec["vmm_start"])
    os.kill(rec["vmm_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while listing(env)[b]["state"] != "crashed":
        assert time.monotonic() < deadline, listing(env)[b]
        time.sleep(0.5)
    row = listing(env)[b]
    assert "SIGKILL" in row["reason"], row
    shown = banger(env["vars"], "vm", "show", b).stdout
    assert "crashed" in shown and "console (last lines)" in shown


def test_sigkill_of_vm_create_mid_boot_leaves_no_vmm_and_no_running_record(env, debian_image_ref):
    # build words instead of a name: the (cached) build runs first, then the boot
    create = subprocess.Popen([sys.executable, "-m", "banger", "vm", "create", f"image={debian_image_ref}",
                               "name=vmtest", "--name", "gamma", *SMALL],
                              env={**os.environ, **env["vars"]}, cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    path = env["state"] / "vms" / "gamma" / "vm.json"
    deadline = time.monotonic() + 120
    while True:  # until the VMM runs and the guest is not ready yet
        assert time.monotonic() < deadline and create.poll() is None, "create ended or never launched"
        if path.exists():
            rec = json.loads(path.read_text())
            if rec["state"] == "starting" and rec["vmm_pid"]:
                break
        time.sleep(0.05)
    vmm = (rec["vmm_pid"], rec["vmm_start"])
    create.kill()
    create.wait()
    deadline = time.monotonic() + 30
    while procs.alive(*vmm):
        assert time.monotonic() < deadline, "the VMM outlived the killed create"
        time.sleep(0.1)
    row = listing(env)["gamma"]
    assert row["state"] == "stopped" and "interrupted" in row["reason"], row
    banger(env["vars"], "vm", "rm", "gamma")


def test_two_users_build_the_same_image_and_each_logs_into_its_vm_with_its_own_key(env, debian_image_ref):
    """No user's key is baked into an image: another user (own state dir, so another managed key)
    builds the same rootfs, byte for byte, in a cache of their own; from the shared cache (as after
    `cache import` of a CI-built image) each user's VM, restored from the snapshot or booted
    cold, lets that user in, and its authorized_keys holds that user's key only."""
    state2 = env["root"] / "state2"
    (state2 / "banger").mkdir(parents=True)
    (state2 / "banger" / "kernels").symlink_to((env["state"] / "kernels").resolve())
    other = {**env["vars"], "XDG_STATE_HOME": str(state2), "BANGER_SSH_CONFIG": str(env["root"] / "ssh_config2")}
    theirs_built = json.loads(banger({**other, "BANGER_CACHE_DIR": str(env["root"] / "cache2")}, "build",
                                     f"image={debian_image_ref}", "name=vmtest", "boot=no", "--json").stdout)
    ours_built = json.loads(banger(env["vars"], "image", "show", "vmtest", "--json").stdout)
    digest = Path(theirs_built["artifacts"]["rootfs"]).name  # blobs/blake3/<hex>: the same file name
    assert digest == Path(ours_built["artifacts"]["rootfs"]).name

    banger(env["vars"], "vm", "create", "vmtest", "--name", "kappa", *SMALL)
    banger(other, "vm", "create", "vmtest", "--name", "delta", "--cold", *SMALL)
    try:
        ours = (env["state"] / "ssh" / "id_ed25519.pub").read_text().split()[1]
        theirs = (state2 / "banger" / "ssh" / "id_ed25519.pub").read_text().split()[1]
        assert theirs != ours
        mine = ssh(env, "kappa", "cat /root/.ssh/authorized_keys").stdout
        proc = subprocess.run(["ssh", "-F", other["BANGER_SSH_CONFIG"], "-o", "BatchMode=yes", "delta.vm",
                               "cat /root/.ssh/authorized_keys"], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr
        assert ours in mine and theirs not in mine
        assert theirs in proc.stdout and ours not in proc.stdout
    finally:
        banger(other, "vm", "rm", "--force", "delta")
        banger(env["vars"], "vm", "rm", "--force", "kappa")


NOBODY = 65534


def as_nobody(argv: list[str], env_vars: dict, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
                          env=env_vars, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_an_unprivileged_user_creates_and_reaches_a_vm(env):
    """Rootless by default: a user with no privileges imports the image (built by root, with
    root's key baked in), creates a VM, and reaches it with plain ssh through the managed config."""
    if os.geteuid() != 0:
        pytest.skip("the test switches to an unprivileged user, which needs root")
    need("setpriv")
    shared = Path(tempfile.mkdtemp(prefix="banger-rootless-", dir="/tmp"))  # pytest's tmp is root-only
    home = shared / "home"
    user = {"PATH": os.environ["PATH"], "HOME": str(home), "XDG_CACHE_HOME": str(home / "cache"),
            "XDG_STATE_HOME": str(home / "state"), "XDG_CONFIG_HOME": str(home / "config"),
            "BANGER_SSH_CONFIG": str(home / "ssh_config"), "BANGER_TREES_DIR": "cache"}
    try:
        shared.chmod(0o755)
        banger(env["vars"], "cache", "export", str(shared / "image.tar.zst"), "--image", "vmtest")
        home.mkdir()
        os.chown(home, NOBODY, NOBODY)
        (shared / "image.tar.zst").chmod(0o644)
        banger_cli = [sys.executable, "-m", "banger"]
        for args in (["cache", "import", str(shared / "image.tar.zst")],
                     ["vm", "create", "vmtest", "--name", "eps", *SMALL]):
            proc = as_nobody([*banger_cli, *args], user)
            assert proc.returncode == 0, f"{args} as nobody: {proc.stderr[-3000:]}"
        rec = json.loads((home / "state" / "banger" / "vms" / "eps" / "vm.json").read_text())
        with open(f"/proc/{rec['vmm_pid']}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        assert set(uids) == {str(NOBODY)}, uids  # the VMM runs as the user, not root
        proc = as_nobody(["ssh", "-F", user["BANGER_SSH_CONFIG"], "-o", "BatchMode=yes", "eps.vm", "hostname"],
                         user, timeout=120)
        assert proc.returncode == 0 and proc.stdout.strip() == "eps", proc.stderr
        proc = as_nobody([*banger_cli, "vm", "rm", "--force", "eps"], user)
        assert proc.returncode == 0, proc.stderr
        assert not procs.alive(rec["vmm_pid"], rec["vmm_start"])
    finally:
        if (shared / "home" / "state" / "banger" / "vms" / "eps").exists():  # the test failed half-way
            as_nobody([sys.executable, "-m", "banger", "vm", "rm", "--force", "eps"], user)
        remove_tree(shared)


def test_gc_keeps_what_a_vm_disk_depends_on(env, pair):
    rec = record(env, pair[0])
    rootfs = Path(rec["cache"]) / "blobs"
    banger(env["vars"], "image", "rm", "vmtest")
    banger(env["vars"], "cache", "gc")
    from banger.core.store import Store

    store = Store(Path(rec["cache"]))
    assert store.path(rec["artifacts"]["rootfs"]).exists() and rootfs.is_dir()
    assert all(store.path(d).exists() for d in rec["artifacts"].values())


def test_rm_leaves_nothing_behind(env, pair):
    a = pair[0]
    rec = record(env, a)
    banger(env["vars"], "vm", "rm", "--force", *pair)
    assert not (env["state"] / "vms" / a).exists()
    assert vmm_processes(f"banger-{a}") == [] and not procs.alive(rec["vmm_pid"], rec["vmm_start"])
    config = env["ssh_config"].read_text() if env["ssh_config"].exists() else ""
    assert f"{a}.vm" not in config and "BEGIN banger" not in config
    known = env["state"] / "ssh" / "known_hosts"
    assert f"{a}.vm" not in (known.read_text() if known.exists() else "")
    assert not (Path(rec["cache"]) / "pins" / f"vm-{a}.json").exists()
    assert names(env["vars"], "--all") == []
    # with nothing pinning it any more, gc reclaims the image the VMs used
    banger(env["vars"], "cache", "gc")
    from banger.core.store import Store

    assert not Store(Path(rec["cache"])).path(rec["artifacts"]["rootfs"]).exists()
