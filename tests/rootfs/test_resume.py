"""resume.sh, the restored VM's half of a snapshot (run with the host's real `sh` in a sandbox
root), and the host's message to it (guest_assets.resume_message). The channel is a file holding
what the host sends; `date`, `mount`, `stty`, `sync` and `systemctl` are fakes that log their
arguments. The boot over real QEMU is tests/vm/test_snapshot_e2e.py."""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from banger.rootfs import guest_assets as ga
from banger.rootfs.sshkey import new_host_key
from tests.rootfs.test_guest_scripts import fake_tool, sandbox_bin, scripts  # noqa: F401  (fixtures)
from tests.rootfs.test_identity import VM_ID, guest  # noqa: F401  (fixture)

USER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIx8uUmoTtf6ZQ2N2HZtE1ZlYQOdJ8Ea3o1i9Tf7TJZB me@host"
NEW_BOOT = "9c1f3a52-0d6e-4b7a-9a43-5f0b2c1d7e88"


@pytest.fixture
def host_key():
    return new_host_key()


def message(host_key, *, sectors: int | None = None, name: str = "clone-2") -> bytes:
    private, public = host_key
    return ga.resume_message(name, VM_ID, USER_KEY, private, public, clock=1795900000.25, seed=b"\x01" * 32,
                             grow_to_sectors=sectors)


def resume(scripts: Path, root: Path, bindir: Path, data: bytes, extra: dict | None = None):
    """One restored VM's run of resume.sh: the channel holds `data`; returns (process, console)."""
    (root / "proc/sys/kernel/random").mkdir(parents=True, exist_ok=True)
    (root / "proc/sys/kernel/random/boot_id").write_text("11111111-2222-3333-4444-555555555555\n")
    (root / "proc/sys/kernel/random/uuid").write_text(NEW_BOOT + "\n")
    (root / "run").mkdir(exist_ok=True)
    for key in (root / "etc/ssh").glob("ssh_host_*_key"):  # as ssh-keygen left them
        key.chmod(0o600)
    channel, console, urandom = root / "channel", root / "console", root / "urandom"
    channel.write_bytes(data)
    console.write_text("")
    for tool in ("date", "mount", "stty", "sync", "systemctl", "sleep"):
        fake_tool(bindir, tool)
    fake_reseeder(bindir, console)
    env = {"PATH": str(bindir), "BANGER_ROOT": str(root), "BANGER_RESUME_CHANNEL": str(channel),
           "BANGER_SCRIPTS_DIR": str(scripts), "BANGER_URANDOM": str(urandom), "BANGER_CONSOLES": str(console),
           "BANGER_SYSTEMD_RUN_DIR": str(root / "no-systemd"), **(extra or {})}
    proc = subprocess.run(["sh", str(scripts / "resume.sh")], env=env, capture_output=True, text=True, timeout=60)
    return proc, console.read_text()


def fake_reseeder(bindir: Path, console: Path) -> None:
    """perl as resume.sh runs it (-e PROGRAM FIFO URANDOM): says on the console that it started,
    then does what the real one does but the ioctl: the line on the FIFO goes to URANDOM."""
    fake = fake_tool(bindir, "perl")
    fake.write_text(fake.read_text().replace("exit 0", f'echo perl-started >> "{console}"\n'
                                             'exec 5< "$3"; rm -f "$3"; read -r seed <&5\n'
                                             'printf %s "$seed" > "$4"\n'))


def log(bindir: Path, tool: str) -> str:
    path = bindir / f"{tool}.log"
    return path.read_text() if path.exists() else ""


def test_a_restored_vm_takes_the_identity_key_entropy_and_clock_the_host_sent(scripts, sandbox_bin, guest, host_key):
    private, public = host_key
    proc, console = resume(scripts, guest, sandbox_bin, message(host_key))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the quiesce line came first, with the snapshot boot's id; then this VM's key and readiness
    # (the reseeder started before it: a restored VM pays no exec for perl); then this VM's key
    # as soon as the reseed and the user's key are done, the rest, and its readiness
    lines = [line for line in console.splitlines() if line]
    assert lines[:2] == ["perl-started", f"{ga.SNAPSHOT_READY_PREFIX} 11111111-2222-3333-4444-555555555555"]
    key_type, key_data = public.split()[:2]
    hostkey = f"{ga.HOSTKEY_PREFIX} {NEW_BOOT} {key_type} {key_data}"
    assert lines[2:] == ["banger-identity: added the host's key to /root/.ssh/authorized_keys", hostkey,
                         f"banger-identity: clone-2 {VM_ID}", hostkey, f"{ga.READY_PREFIX} {NEW_BOOT}"]
    # the host's key, private half 0600, and no other host key left
    ssh = guest / "etc/ssh"
    assert (ssh / "ssh_host_ed25519_key").read_bytes() == private
    assert stat.S_IMODE((ssh / "ssh_host_ed25519_key").stat().st_mode) == 0o600
    assert (ssh / "ssh_host_ed25519_key.pub").read_text().split()[:2] == [key_type, key_data]
    assert sorted(p.name for p in ssh.glob("ssh_host_*")) == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
    # identity.sh ran on the words: name, machine id, marker, the user's key
    assert (guest / "etc/hostname").read_text() == "clone-2\n"
    assert (guest / "etc/machine-id").read_text() == VM_ID + "\n"
    assert (guest / "proc/sys/kernel/hostname").read_text() == "clone-2"
    assert (guest / ga.IDENTITY_MARKER.lstrip("/")).read_text() == VM_ID + "\n"
    assert USER_KEY.split()[1] in (guest / "root/.ssh/authorized_keys").read_text()
    # entropy, clock, boot id
    assert (guest / "urandom").read_text() == "01" * 32
    assert log(sandbox_bin, "perl").split()[-1] == str(guest / "urandom")  # RNDRESEEDCRNG on it
    assert log(sandbox_bin, "date").split() == ["-s", "@1795900000.250"]
    assert (guest / "run/banger-boot-id").read_text() == NEW_BOOT + "\n"
    assert log(sandbox_bin, "mount").split() == ["--bind", str(guest / "run/banger-boot-id"),
                                                 str(guest / "proc/sys/kernel/random/boot_id")]
    assert log(sandbox_bin, "stty").split() == ["raw", "-echo"]


def test_a_grown_disk_is_waited_for_then_resized(scripts, sandbox_bin, guest, host_key, tmp_path):
    block = tmp_path / "sys-block"
    (block / "vda").mkdir(parents=True)
    (block / "vda/size").write_text("4194304\n")  # the kernel already saw the new size
    fake_tool(sandbox_bin, "resize2fs")
    proc, _ = resume(scripts, guest, sandbox_bin, message(host_key, sectors=4194304),
                     {"BANGER_SYS_BLOCK": str(block)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert log(sandbox_bin, "resize2fs").split() == ["/dev/vda"]
    assert log(sandbox_bin, "sleep") == ""


def test_a_channel_that_closes_early_is_reported_and_announces_nothing(scripts, sandbox_bin, guest):
    proc, console = resume(scripts, guest, sandbox_bin, b"some noise\n")
    assert proc.returncode == 1
    assert "closed before it sent this VM's identity" in proc.stdout
    assert ga.READY_PREFIX + " " not in console
    assert (guest / "etc/hostname").read_text() == "image-name\n"


def test_the_agent_of_a_snapshot_boot_hands_over_to_resume(scripts, sandbox_bin, guest, tmp_path, host_key):
    """agent.sh with banger.snapshot=1 on the command line announces no readiness itself."""
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"console=ttyS0 {ga.SNAPSHOT_WORD} quiet\n")
    (guest / "proc/sys/kernel/random").mkdir(parents=True, exist_ok=True)
    proc, console = resume(scripts, guest, sandbox_bin, message(host_key),
                           {"BANGER_CMDLINE_FILE": str(cmdline), "BANGER_SSH_DIR": str(guest / "etc/ssh")})
    assert proc.returncode == 0
    agent = subprocess.run(["sh", str(scripts / "agent.sh")], capture_output=True, text=True, timeout=60, env={
        "PATH": str(sandbox_bin), "BANGER_CMDLINE_FILE": str(cmdline), "BANGER_SCRIPTS_DIR": str(tmp_path / "none"),
        "BANGER_CONSOLES": str(guest / "console"), "BANGER_SYSTEMD_RUN_DIR": str(tmp_path / "none")})
    assert agent.returncode != 0  # it tried to exec resume.sh (absent here) instead of announcing
    assert "resume.sh" in agent.stderr


@pytest.mark.parametrize("bad", ["ssh-rsa AAAAB3NzaC1yc2E", "not a key"])
def test_the_message_refuses_a_host_key_that_is_not_ed25519(host_key, bad):
    with pytest.raises(ga.AssetError, match="not an ed25519 public key"):
        ga.resume_message("vm", VM_ID, USER_KEY, host_key[0], bad, clock=0, seed=b"x")


def test_the_message_is_one_line_of_words_then_the_key(host_key):
    text = message(host_key, sectors=100).decode()
    first, *rest = text.splitlines()
    assert first.startswith(f"{ga.RESUME_PREFIX} banger.name=clone-2 banger.id={VM_ID} banger.grow=1 ")
    assert "banger.disk_sectors=100" in first and "systemd." not in first
    assert rest[0] == "-----BEGIN OPENSSH PRIVATE KEY-----" and rest[-1] == ga.RESUME_END
    assert os.linesep == "\n" and text.endswith("\n")


def test_a_bridge_vm_takes_its_own_mac_and_address(scripts, sandbox_bin, guest, host_key, tmp_path):
    from banger.hypervisor.vm import GuestNetwork

    net = tmp_path / "sys-class-net"
    for nic in ("lo", "eth0"):
        (net / nic).mkdir(parents=True)
    (net / "eth0/device").mkdir()
    (net / "lo/flags").write_text("0x9\n")
    fake_tool(sandbox_bin, "ip")
    private, public = host_key
    data = ga.resume_message("br-1", VM_ID, USER_KEY, private, public, clock=1.0, seed=b"\x02",
                             network=GuestNetwork("172.30.0.7/24", "172.30.0.1", "172.30.0.1"),
                             mac="52:54:00:ab:cd:07")
    proc, console = resume(scripts, guest, sandbox_bin, data,
                           {"BANGER_SYS_CLASS_NET": str(net), "BANGER_RESOLV_CONF": str(tmp_path / "resolv.conf"),
                            "BANGER_NETWORK_ENV": str(tmp_path / "none.env")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert log(sandbox_bin, "ip").splitlines() == [
        "link set eth0 address 52:54:00:ab:cd:07", "addr flush dev eth0", "link set eth0 up",
        "addr replace 172.30.0.7/24 dev eth0", "route replace default via 172.30.0.1 dev eth0"]
    assert (tmp_path / "resolv.conf").read_text() == "nameserver 172.30.0.1\n"
    assert f"{ga.READY_PREFIX} {NEW_BOOT}" in console


def test_a_user_network_vm_leaves_the_nic_as_it_was(scripts, sandbox_bin, guest, host_key):
    fake_tool(sandbox_bin, "ip")
    proc, _ = resume(scripts, guest, sandbox_bin, message(host_key))
    assert proc.returncode == 0 and log(sandbox_bin, "ip") == ""


def test_the_message_refuses_a_bad_mac(host_key):
    from banger.hypervisor.vm import GuestNetwork

    with pytest.raises(ga.AssetError, match="MAC address"):
        ga.resume_message("vm", VM_ID, USER_KEY, host_key[0], host_key[1], clock=0, seed=b"x",
                          network=GuestNetwork("172.30.0.7/24", "172.30.0.1", None), mac="52:54:00:AB:CD:07")


def test_the_reseed_ioctl_is_what_perl_runs(scripts):
    """The perl line asks for ioctl 0x5207 (RNDRESEEDCRNG, _IO('R', 7)) on the urandom device."""
    text = (scripts / "resume.sh").read_text()
    assert "ioctl($f, 0x5207, 0)" in text and (ord("R") << 8 | 7) == 0x5207


@pytest.mark.parametrize("interpreter", ["perl", "python3"])
def test_the_reseeder_really_reseeds_here_as_root_only(scripts, tmp_path, interpreter):
    """The script's reseeder (perl's, else python3's), run on this host's kernel (a reseed is
    harmless) with a seed line in place of its FIFO: it succeeds for root and is refused (EPERM)
    for another user, as RNDRESEEDCRNG is; a wrong ioctl number would fail for both or succeed
    for both."""
    import re
    import shutil

    if os.geteuid() != 0 or not shutil.which(interpreter) or not shutil.which("setpriv"):
        pytest.skip(f"needs root, {interpreter} and setpriv")
    flag = "-e" if interpreter == "perl" else "-c"
    program = re.search(rf"{interpreter} {flag} '([^']+)'", (scripts / "resume.sh").read_text()).group(1)

    def run(*prefix: str) -> int:
        seed = tmp_path / "seed"
        seed.write_text("ab" * 32 + "\n")
        seed.chmod(0o644)
        return subprocess.run([*prefix, interpreter, flag, program, str(seed), "/dev/urandom"],
                              capture_output=True).returncode

    tmp_path.chmod(0o755)
    assert run() == 0
    assert run("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups") != 0


def test_the_channel_named_on_the_kernel_command_line_is_read(scripts, sandbox_bin, guest, host_key):
    """Firecracker's snapshot boot names its one serial port (banger.resume_channel=/dev/ttyS0)."""
    (guest / "proc").mkdir(exist_ok=True)
    named = guest / "ttyS0"
    data = message(host_key)
    named.write_bytes(data)
    (guest / "proc/cmdline").write_text(f"console=ttyS0 {ga.SNAPSHOT_WORD} {ga.RESUME_CHANNEL_WORD}={named} quiet\n")
    proc, console = resume(scripts, guest, sandbox_bin, b"", {"BANGER_RESUME_CHANNEL": ""})  # the default: empty
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (guest / "etc/hostname").read_text() == "clone-2\n"
    assert console.splitlines()[-1] == f"{ga.READY_PREFIX} {NEW_BOOT}"
    assert log(sandbox_bin, "stty").split() == ["raw", "-echo"]


def test_a_named_channel_that_is_not_there_is_reported(scripts, sandbox_bin, guest):
    (guest / "proc").mkdir(exist_ok=True)
    (guest / "proc/cmdline").write_text(f"{ga.RESUME_CHANNEL_WORD}={guest}/no-such-dir/ttyS0\n")
    proc, console = resume(scripts, guest, sandbox_bin, b"", {"BANGER_RESUME_CHANNEL": ""})
    assert proc.returncode != 0 and f"{guest}/no-such-dir/ttyS0" in proc.stdout + proc.stderr
    assert ga.SNAPSHOT_READY_PREFIX not in console


def test_without_the_word_the_channel_is_qemus_second_serial_port(scripts):
    text = (scripts / "resume.sh").read_text()
    assert f"channel=${{channel:-{ga.RESUME_CHANNEL}}}" in text and ga.RESUME_CHANNEL == "/dev/ttyS1"
    assert f"{ga.RESUME_CHANNEL_WORD}=?*)" in text  # the word the host puts on the command line


def test_only_firecrackers_snapshot_boot_names_the_channel_and_both_mask_the_getty():
    from banger.steps.snapshot import snapshot_cmdline

    qemu, firecracker = snapshot_cmdline("quiet").split(), snapshot_cmdline("quiet", "firecracker").split()
    assert "systemd.mask=serial-getty@ttyS0.service" in qemu and "systemd.mask=serial-getty@ttyS0.service" in firecracker
    assert not any(w.startswith(ga.RESUME_CHANNEL_WORD) for w in qemu)  # QEMU's: the default, ttyS1
    assert [w for w in firecracker if w not in qemu] == [f"{ga.RESUME_CHANNEL_WORD}=/dev/ttyS0"]


def test_a_missing_channel_is_never_created(scripts, sandbox_bin, guest, tmp_path):
    """Opened read-only: a channel that is not there (no second serial port) is reported, and no
    file appears in its place (as root, a read-write open would create /dev/ttyS1 as a file)."""
    missing = tmp_path / "dev" / "ttyS9"
    missing.parent.mkdir()
    proc, console = resume(scripts, guest, sandbox_bin, b"", {"BANGER_RESUME_CHANNEL": str(missing)})
    assert proc.returncode == 1 and "cannot open" in proc.stdout and not missing.exists()
