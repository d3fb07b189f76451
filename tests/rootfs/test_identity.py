"""A persistent VM's identity (identity.sh, run with the host's real `sh` in a sandbox root) and
the host key lines the agent prints for the host to pin (parse_hostkey_lines).

identity.sh's seams: BANGER_ROOT prefixes every path (/etc, /proc, the marker), BANGER_CMDLINE_FILE
is the kernel command line. An empty PATH proves that a run executes no external command: any
would fail with "not found" on stderr.
"""
from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from banger.rootfs import guest_assets as ga
from tests.conftest import need
from tests.rootfs.test_guest_scripts import NET, directives, fake_tool, render, run_sh, words
from tests.rootfs.test_guest_scripts import sandbox_bin, scripts  # noqa: F401  (fixtures)

VM_ID = "0123456789abcdef0123456789abcdef"
OTHER_ID = "fedcba9876543210fedcba9876543210"
IMAGE_KEYS = ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "ssh_host_rsa_key", "ssh_host_rsa_key.pub",
              "ssh_host_ecdsa_key", "ssh_host_ecdsa_key.pub")
HOSTS = "127.0.0.1\tlocalhost\n127.0.1.1\timage-name\n::1\tlocalhost ip6-localhost\n# a comment\n"
SH = shutil.which("sh")


@pytest.fixture
def guest(tmp_path) -> Path:
    """A guest root as an image leaves it: its own host keys, host name, machine id and hosts."""
    root = tmp_path / "root"
    (root / "etc/ssh").mkdir(parents=True)
    (root / "proc/sys/kernel").mkdir(parents=True)
    for name in IMAGE_KEYS:
        (root / "etc/ssh" / name).write_text(f"image key {name}\n")
    (root / "etc/ssh/sshd_config").write_text("# config\n")
    (root / "etc/hostname").write_text("image-name\n")
    (root / "etc/machine-id").write_text("ffffffffffffffffffffffffffffffff\n")
    (root / "etc/hosts").write_text(HOSTS)
    (root / "proc/sys/kernel/hostname").write_text("builder\n")
    return root


def boot(scripts: Path, root: Path, cmdline: str, path: Path | None, shell: str | None = SH,
         extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """One run of identity.sh with `cmdline` as /proc/cmdline; PATH is `path` (None: empty)."""
    (root / "proc/cmdline").write_text(cmdline + "\n")
    env = {"PATH": str(path) if path else "", "BANGER_ROOT": str(root), **(extra or {})}
    argv = [shell, "sh"] if shell and shell.endswith("busybox") else [shell]
    return subprocess.run([*argv, str(scripts / "identity.sh")], env=env, capture_output=True, text=True,
                          timeout=60)


def vm_cmdline(name: str = "web-1", vm_id: str = VM_ID, grow: bool = False, root: str = "root=/dev/vda") -> str:
    return f"console=ttyS0 {root} rw panic=-1 {ga.identity_cmdline(name, vm_id, grow)}".replace("  ", " ")


def snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under root with its mtime and content: what a no-op run must leave alone (but
    /proc/cmdline, which the test writes)."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*")) if str(p.relative_to(root)) not in ("proc", "proc/cmdline")}


def marker(root: Path) -> Path:
    return root / ga.IDENTITY_MARKER.lstrip("/")


# ---- first boot, later boots, another VM -----------------------------------------------------
@pytest.mark.parametrize("shell", ["sh", "busybox"])
def test_first_boot_sets_the_identity_and_removes_the_image_host_keys(scripts, sandbox_bin, guest, shell):
    if shell == "busybox":
        need("busybox")
    fake_tool(sandbox_bin, "resize2fs")
    proc = boot(scripts, guest, vm_cmdline(), sandbox_bin, shutil.which(shell))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == f"banger-identity: web-1 {VM_ID}\n" and not proc.stderr
    assert sorted(p.name for p in (guest / "etc/ssh").iterdir()) == ["sshd_config"]
    assert (guest / "etc/hostname").read_text() == "web-1\n"
    assert (guest / "etc/machine-id").read_text() == VM_ID + "\n"
    assert (guest / "etc/hosts").read_text() == HOSTS.replace("127.0.1.1\timage-name", "127.0.1.1 web-1")
    assert (guest / "proc/sys/kernel/hostname").read_text() == "web-1"
    assert marker(guest).read_text() == VM_ID + "\n"
    assert not list(guest.rglob("*.banger-new")) and not list(guest.rglob("*.new"))
    assert not (sandbox_bin / "resize2fs.log").exists()  # no banger.grow=1


def test_a_later_boot_with_the_same_id_changes_nothing_and_runs_no_command(scripts, sandbox_bin, guest):
    assert boot(scripts, guest, vm_cmdline(), sandbox_bin).returncode == 0
    (guest / "etc/ssh/ssh_host_ed25519_key").write_text("the VM's own key\n")  # made by sshd-keys.sh
    (guest / "etc/hostname").write_text("renamed-by-the-user\n")
    before = snapshot(guest)
    proc = boot(scripts, guest, vm_cmdline(grow=True), path=None)  # no tools at all
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert snapshot(guest) == before


@pytest.mark.parametrize("cmdline", ["console=ttyS0 root=/dev/vda rw", "banger.name=web-1 banger.grow=1",
                                     "banger.ip=10.0.0.2/24 systemd.machine_id=" + VM_ID, ""])
def test_without_banger_id_nothing_happens(scripts, guest, cmdline):
    before = snapshot(guest)
    proc = boot(scripts, guest, cmdline, path=None)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert snapshot(guest) == before and not marker(guest).parent.exists()


def test_no_cmdline_file_is_no_banger_id(scripts, guest):
    proc = subprocess.run([SH, str(scripts / "identity.sh")], capture_output=True, text=True,
                          env={"PATH": "", "BANGER_ROOT": str(guest),
                               "BANGER_CMDLINE_FILE": str(guest / "absent")})
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_a_new_id_gives_new_host_keys_and_name(scripts, sandbox_bin, guest):
    """Two VMs over one image: sshd-keys.sh (ordered after identity.sh) makes each its own key,
    and the agent prints that key for the host to pin."""
    need("ssh-keygen")
    ssh_dir = guest / "etc/ssh"
    keys = []
    for name, vm_id in (("web-1", VM_ID), ("web-2", OTHER_ID)):
        proc = boot(scripts, guest, vm_cmdline(name, vm_id), sandbox_bin)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert not (ssh_dir / "ssh_host_ed25519_key").exists()
        keygen = run_sh(scripts / "sshd-keys.sh", {"PATH": str(sandbox_bin), "BANGER_SSH_DIR": str(ssh_dir)})
        assert keygen.returncode == 0, keygen.stderr
        key = (ssh_dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        out = agent(scripts, sandbox_bin, guest.parent, ssh_dir, boot_id=f"boot-{name}")
        assert ga.parse_hostkey_lines(out.splitlines(), f"boot-{name}") == [" ".join(key)]
        keys.append(key)
        assert (guest / "etc/hostname").read_text() == name + "\n"
        assert (guest / "etc/machine-id").read_text() == vm_id + "\n"
        assert marker(guest).read_text() == vm_id + "\n"
        hosts = (guest / "etc/hosts").read_text().splitlines()
        assert [x for x in hosts if x.startswith("127.0.1.1")] == [f"127.0.1.1 {name}"]
    assert keys[0] != keys[1]


# ---- /etc/hosts --------------------------------------------------------------------------------
@pytest.mark.parametrize("hosts,expected", [
    # no 127.0.1.1 line: one is added at the end; a last line without newline is kept
    ("127.0.0.1 localhost\n::1 localhost", "127.0.0.1 localhost\n::1 localhost\n127.0.1.1 vm\n"),
    # several (one indented): the first becomes banger's, the others go; comments and blanks stay
    ("# hosts\n\n  127.0.1.1\told old.example\n10.0.0.1 db\n127.0.1.1 other\n127.0.1.10 keep\n",
     "# hosts\n\n127.0.1.1 vm\n10.0.0.1 db\n127.0.1.10 keep\n"),
    ("", "127.0.1.1 vm\n"),
    (None, "127.0.0.1 localhost\n::1 localhost\n127.0.1.1 vm\n"),  # no /etc/hosts
])
def test_hosts_gets_one_127_0_1_1_line(scripts, sandbox_bin, guest, hosts, expected):
    if hosts is None:
        (guest / "etc/hosts").unlink()
    else:
        (guest / "etc/hosts").write_text(hosts)
    assert boot(scripts, guest, vm_cmdline("vm"), sandbox_bin).returncode == 0
    assert (guest / "etc/hosts").read_text() == expected


# ---- invalid words ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad_id", ["0123456789ABCDEF0123456789ABCDEF", VM_ID[:-1], VM_ID + "0", "x" * 32])
def test_an_invalid_machine_id_is_ignored_with_a_message(scripts, sandbox_bin, guest, bad_id):
    proc = boot(scripts, guest, f"banger.name=web-1 banger.id={bad_id}", sandbox_bin)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"banger-identity: banger.id={bad_id} is not a machine id" in proc.stdout
    assert (guest / "etc/machine-id").read_text() == "ffffffffffffffffffffffffffffffff\n"
    # the rest of the identity is still set up, once
    assert (guest / "etc/hostname").read_text() == "web-1\n"
    assert not (guest / "etc/ssh/ssh_host_rsa_key").exists()
    assert marker(guest).read_text() == bad_id + "\n"
    assert boot(scripts, guest, f"banger.name=web-1 banger.id={bad_id}", path=None).stdout == ""


@pytest.mark.parametrize("bad_name", ["Web", "-web", "web-", "web_1", "a" * 64, ""])
def test_an_invalid_name_leaves_the_host_name(scripts, sandbox_bin, guest, bad_name):
    proc = boot(scripts, guest, f"banger.name={bad_name} banger.id={VM_ID}", sandbox_bin)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "is not a host name" in proc.stdout
    assert (guest / "etc/hostname").read_text() == "image-name\n"
    assert (guest / "etc/hosts").read_text() == HOSTS
    assert (guest / "etc/machine-id").read_text() == VM_ID + "\n"
    assert proc.stdout.splitlines()[-1] == f"banger-identity: {bad_name or '-'} {VM_ID}"


def test_the_longest_name_is_accepted(scripts, sandbox_bin, guest):
    name = "a" * 63
    assert boot(scripts, guest, vm_cmdline(name), sandbox_bin).returncode == 0
    assert (guest / "etc/hostname").read_text() == name + "\n"


# ---- growing the root file system ----------------------------------------------------------
@pytest.mark.parametrize("root_word,device", [("root=/dev/vda", "/dev/vda"), ("", "/dev/vda"),
                                              ("root=/dev/vdb1", "/dev/vdb1")])
def test_grow_resizes_the_root_device(scripts, sandbox_bin, guest, root_word, device):
    fake_tool(sandbox_bin, "resize2fs")
    proc = boot(scripts, guest, vm_cmdline(grow=True, root=root_word), sandbox_bin)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (sandbox_bin / "resize2fs.log").read_text() == f"{device}\n"
    assert marker(guest).read_text() == VM_ID + "\n"
    # once per id
    assert boot(scripts, guest, vm_cmdline(grow=True, root=root_word), sandbox_bin).returncode == 0
    assert (sandbox_bin / "resize2fs.log").read_text() == f"{device}\n"


def test_grow_without_resize2fs_says_so_and_goes_on(scripts, sandbox_bin, guest):
    proc = boot(scripts, guest, vm_cmdline(grow=True), sandbox_bin)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "banger-identity: banger.grow=1, but resize2fs is not installed" in proc.stdout
    assert marker(guest).read_text() == VM_ID + "\n"


def test_grow_with_a_root_that_is_no_device_path_says_so(scripts, sandbox_bin, guest):
    fake_tool(sandbox_bin, "resize2fs")
    proc = boot(scripts, guest, vm_cmdline(grow=True, root="root=UUID=1234"), sandbox_bin)
    assert "root=UUID=1234 is not a device path" in proc.stdout
    assert not (sandbox_bin / "resize2fs.log").exists()


def test_a_failed_resize_is_reported_and_the_identity_kept(scripts, sandbox_bin, guest):
    fake_tool(sandbox_bin, "resize2fs", exit_code=1)
    proc = boot(scripts, guest, vm_cmdline(grow=True), sandbox_bin)
    assert proc.returncode == 0 and "resize2fs /dev/vda failed" in proc.stdout
    assert marker(guest).read_text() == VM_ID + "\n"


def test_an_unwritable_marker_fails_the_unit_so_the_next_boot_retries(scripts, sandbox_bin, guest):
    marker(guest).parent.parent.mkdir(parents=True)
    marker(guest).parent.write_text("a file where the marker's dir should be\n")
    proc = boot(scripts, guest, vm_cmdline(), sandbox_bin)
    assert proc.returncode == 1 and "the next boot does this again" in proc.stdout
    assert (guest / "etc/hostname").read_text() == "web-1\n"


# ---- the agent's host key lines --------------------------------------------------------------
def agent(scripts: Path, bindir: Path, tmp: Path, ssh_dir: Path, boot_id: str = "b00t") -> str:
    """Run agent.sh; the text it wrote to its (file) console, which must equal its stdout's lines."""
    (tmp / "boot_id").write_text(boot_id + "\n")
    console = tmp / "console"
    console.write_text("")
    proc = run_sh(scripts / "agent.sh", {"PATH": str(bindir), "BANGER_BOOT_ID_FILE": str(tmp / "boot_id"),
                                         "BANGER_CONSOLES": str(console), "BANGER_SSH_DIR": str(ssh_dir)})
    assert proc.returncode == 0, proc.stderr
    text = console.read_text()
    assert text.startswith("\n") and text[1:] == proc.stdout
    return text


def test_agent_prints_the_host_key_before_the_ready_line(scripts, sandbox_bin, tmp_path):
    ssh_dir = tmp_path / "ssh"
    ssh_dir.mkdir()
    blob = ed25519_blob()
    (ssh_dir / "ssh_host_ed25519_key.pub").write_text(f"ssh-ed25519 {blob} root@banger-guest\n")
    lines = agent(scripts, sandbox_bin, tmp_path, ssh_dir, "0f3c9a6e-1111").splitlines()
    assert lines == ["", f"{ga.HOSTKEY_PREFIX} 0f3c9a6e-1111 ssh-ed25519 {blob}", f"{ga.READY_PREFIX} 0f3c9a6e-1111"]
    assert ga.parse_hostkey_lines(lines) == [f"ssh-ed25519 {blob}"]
    assert ga.parse_hostkey_lines(lines, "0f3c9a6e-1111") == [f"ssh-ed25519 {blob}"]
    assert ga.parse_hostkey_lines(lines, "another-boot") == []


def test_agent_without_a_host_key_prints_the_ready_line_alone(scripts, sandbox_bin, tmp_path):
    for ssh_dir in (tmp_path / "absent", tmp_path / "empty-key"):
        if ssh_dir.name == "empty-key":
            ssh_dir.mkdir()
            (ssh_dir / "ssh_host_ed25519_key.pub").write_text("")
        assert agent(scripts, sandbox_bin, tmp_path, ssh_dir).splitlines() == ["", f"{ga.READY_PREFIX} b00t"]


def test_agent_reads_a_real_key_without_newline(scripts, sandbox_bin, tmp_path):
    need("ssh-keygen")
    ssh_dir = tmp_path / "ssh"
    assert run_sh(scripts / "sshd-keys.sh", {"PATH": str(sandbox_bin), "BANGER_SSH_DIR": str(ssh_dir)}).returncode == 0
    pub = ssh_dir / "ssh_host_ed25519_key.pub"
    key = " ".join(pub.read_text().split()[:2])
    pub.write_text(key)  # no comment, no newline
    assert ga.parse_hostkey_lines(agent(scripts, sandbox_bin, tmp_path, ssh_dir).splitlines()) == [key]


def ed25519_blob(key_type: bytes = b"ssh-ed25519", key: bytes = bytes(range(32))) -> str:
    return base64.b64encode(len(key_type).to_bytes(4, "big") + key_type + len(key).to_bytes(4, "big") + key).decode()


def test_parse_hostkey_lines_takes_console_noise_and_keeps_each_key_once():
    blob, other = ed25519_blob(), ed25519_blob(key=bytes(32))
    lines = ["[    1.234] random: crng init done",
             f"{ga.HOSTKEY_PREFIX} b1 ssh-ed25519 {blob}\r",  # a serial console's line ending
             f"  {ga.HOSTKEY_PREFIX} b1 ssh-ed25519 {blob}",  # the same line through a second console
             f"{ga.HOSTKEY_PREFIX} b2 ssh-ed25519 {other}\n",
             f"{ga.HOSTKEY_PREFIX} b1 ssh-rsa {blob}",  # the blob says ssh-ed25519
             f"{ga.HOSTKEY_PREFIX} b1 ssh-ed25519 {blob[:-3]}",  # not base64 of a key
             f"{ga.HOSTKEY_PREFIX} b1 ssh-ed25519",
             f"echo {ga.HOSTKEY_PREFIX} b1 ssh-ed25519 {other}",  # not at the start of the line
             f"{ga.HOSTKEY_PREFIX} b1 ssh-ed25519 {other} trailing words",
             f"{ga.READY_PREFIX} b1"]
    assert ga.parse_hostkey_lines(lines) == [f"ssh-ed25519 {blob}", f"ssh-ed25519 {other}"]
    assert ga.parse_hostkey_lines(iter(lines), "b1") == [f"ssh-ed25519 {blob}"]
    assert ga.parse_hostkey_lines(lines, "b2") == [f"ssh-ed25519 {other}"]
    assert ga.parse_hostkey_lines([]) == []


# ---- the host side of the contract ---------------------------------------------------------
def test_identity_cmdline_words():
    assert ga.identity_cmdline("web-1", VM_ID, False) == \
        f"banger.name=web-1 banger.id={VM_ID} systemd.hostname=web-1 systemd.machine_id={VM_ID}"
    assert ga.identity_cmdline("a", VM_ID, True, systemd=False) == f"banger.name=a banger.id={VM_ID} banger.grow=1"
    assert ga.identity_cmdline("x" * 63, VM_ID, True).split()[2] == "banger.grow=1"
    assert ga.IDENTITY_MARKER == "/var/lib/banger/vm-id" and ga.HOSTKEY_PREFIX == "BANGER_HOSTKEY"


@pytest.mark.parametrize("name,vm_id", [("Web", VM_ID), ("-a", VM_ID), ("a-", VM_ID), ("a" * 64, VM_ID),
                                        ("", VM_ID), ("a b", VM_ID), ("web\n", VM_ID), ("a.b", VM_ID),
                                        ("web", VM_ID.upper()), ("web", VM_ID[:-1]), ("web", VM_ID + "\n"),
                                        ("web", "0" * 32), ("web", None)])
def test_identity_cmdline_refuses_what_the_guest_would_not_take(name, vm_id):
    with pytest.raises(ga.AssetError) as err:
        ga.identity_cmdline(name, vm_id, False)
    assert "\n" not in str(err.value)


# ---- units and the sysv hook -------------------------------------------------------------------
def test_identity_unit_runs_early_before_the_host_keys_and_only_with_banger_id():
    d = directives(render("banger-identity.service.j2"))
    assert d["Unit.DefaultDependencies"] == ["no"]
    # either word starts it (`|`: triggering conditions); the build's boot check passes the key
    assert d["Unit.ConditionKernelCommandLine"] == ["|banger.id", "|banger.ssh_key"]
    assert words(d, "Unit.After") == ["systemd-remount-fs.service"]
    assert {"banger-sshd-keys.service", "ssh.service", "sshd.service", "ssh.socket"} <= set(words(d, "Unit.Before"))
    assert d["Service.Type"] == ["oneshot"] and d["Service.RemainAfterExit"] == ["yes"]
    assert d["Service.ExecStart"] == [f"{ga.SCRIPTS_DIR}/identity.sh"]
    assert d["Install.WantedBy"] == ["multi-user.target"]
    assert "banger-identity.service" in ga.UNITS and "identity.sh" in ga.SCRIPTS
    # the host key unit's condition ("no ed25519 key") is checked when it starts: after identity
    keys = directives(render("banger-sshd-keys.service.j2"))
    assert keys["Unit.ConditionPathExists"] == ["!/etc/ssh/ssh_host_ed25519_key"]


@pytest.mark.parametrize("sshd_in_image", [False, True])
def test_agent_unit_waits_for_the_host_key(sshd_in_image):
    d = directives(ga.render_template("banger-agent.service.j2", NET, sshd_in_image=sshd_in_image).decode())
    assert {"banger-identity.service", "banger-sshd-keys.service"} <= set(words(d, "Unit.After"))


def test_sysv_hook_runs_identity_first_and_only_with_banger_id(scripts, tmp_path):
    text = (scripts / "sysv-boot.sh").read_text()
    calls = [line.strip() for line in text.splitlines() if '"$dir/' in line]
    assert calls[0] == '*" banger.id="*|*" banger.ssh_key="*) "$dir/identity.sh" ;;'
    assert calls[1:3] == ['"$dir/network.sh"', '"$dir/sshd-keys.sh"']
    # the guard is builtins only: the same case statement, run with no PATH
    guard = text[text.index("cmdline=\n"):text.index("esac\n") + 5].replace("/proc/cmdline", '"$CMDLINE"')
    guard = guard.replace('"$dir/identity.sh"', "echo identity")
    for cmdline, expected in ((vm_cmdline(), "identity\n"), ("console=ttyS0 root=/dev/vda", ""),
                              ("xbanger.id=1", ""), (f"panic=-1 {ga.ssh_key_word(HOST_KEY)}", "identity\n")):
        (tmp_path / "cmdline").write_text(cmdline + "\n")
        proc = subprocess.run([SH, "-c", guard], env={"PATH": "", "CMDLINE": str(tmp_path / "cmdline")},
                              capture_output=True, text=True)
        assert (proc.stdout, proc.stderr) == (expected, "")


# ---- the host user's key (banger.ssh_key) --------------------------------------------------------
HOST_KEY = "ssh-ed25519 " + base64.b64encode(b"\0\0\0\x0bssh-ed25519\0\0\0\x20" + b"k" * 32).decode() + " me@host"


def test_the_host_key_is_added_once_and_other_keys_are_kept(scripts, sandbox_bin, guest):
    auth = guest / "root/.ssh/authorized_keys"
    auth.parent.mkdir(parents=True)
    auth.write_text("ssh-ed25519 AAAAimagekey builder\n")
    cmdline = (f"console=ttyS0 root=/dev/vda rw "
               f"{ga.identity_cmdline('web-1', VM_ID, False, ssh_key=HOST_KEY)}")
    proc = boot(scripts, guest, cmdline, sandbox_bin)
    assert proc.returncode == 0, proc.stderr
    kind, blob = HOST_KEY.split()[:2]
    assert auth.read_text() == f"ssh-ed25519 AAAAimagekey builder\n{kind} {blob} banger\n"
    assert "added the host's key to /root/.ssh/authorized_keys" in proc.stdout
    assert oct(auth.stat().st_mode & 0o777) == "0o600"
    # a later boot (same id, key present): no exec at all, nothing written
    before = snapshot(guest)
    again = boot(scripts, guest, cmdline, None)
    assert again.returncode == 0 and again.stdout == "" and again.stderr == ""
    assert snapshot(guest) == before


def test_the_host_key_comes_back_at_a_later_boot_when_it_was_removed(scripts, sandbox_bin, guest):
    cmdline = f"root=/dev/vda {ga.identity_cmdline('web-1', VM_ID, False, ssh_key=HOST_KEY)}"
    assert boot(scripts, guest, cmdline, sandbox_bin).returncode == 0
    auth = guest / "root/.ssh/authorized_keys"
    auth.write_text("")
    assert boot(scripts, guest, cmdline, sandbox_bin).returncode == 0
    assert auth.read_text().startswith("ssh-ed25519 ")


def test_a_malformed_key_word_changes_nothing(scripts, sandbox_bin, guest):
    cmdline = f"root=/dev/vda {ga.identity_cmdline('web-1', VM_ID, False)} banger.ssh_key=ssh-ed25519:a$b"
    proc = boot(scripts, guest, cmdline, sandbox_bin)
    assert "not TYPE:BASE64" in proc.stdout
    assert not (guest / "root/.ssh/authorized_keys").exists()


def test_the_boot_checks_key_is_added_without_an_identity(scripts, sandbox_bin, guest):
    """The build's boot check names no VM (no banger.id), only the key it logs in with: the key is
    added, nothing else changes (no marker, host keys, host name)."""
    before = snapshot(guest)
    proc = boot(scripts, guest, f"console=ttyS0 root=/dev/vda panic=-1 {ga.ssh_key_word(HOST_KEY)}", sandbox_bin)
    assert proc.returncode == 0, proc.stderr
    kind, blob = HOST_KEY.split()[:2]
    assert (guest / "root/.ssh/authorized_keys").read_text() == f"{kind} {blob} banger\n"
    after = snapshot(guest)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    assert changed <= {"root", "root/.ssh", "root/.ssh/authorized_keys"}, changed
    assert not marker(guest).parent.exists()


def test_identity_cmdline_refuses_what_is_not_a_public_key():
    with pytest.raises(ga.AssetError, match="not an OpenSSH public key"):
        ga.identity_cmdline("web-1", VM_ID, False, ssh_key="-----BEGIN OPENSSH PRIVATE KEY-----")
    assert "banger.ssh_key=ssh-ed25519:" in ga.identity_cmdline("web-1", VM_ID, False, ssh_key=HOST_KEY)
