"""The guest scripts and units, rendered from templates/ and run with the host's real `sh`.

The scripts' test seams (RUN_PLAN=1, OS_RELEASE_FILE, BANGER_FIRST_BOOT_MARKER, ...) let them run
here without touching the host. Installing a real package inside a test is not possible, so the
"install succeeded / failed" paths run against a fake package manager on a sandbox PATH.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from banger.rootfs import guest_assets as ga
from tests.conftest import need

NET = ga.NetworkSettings()
# What the scripts call besides shell builtins; a sandbox PATH holds only these (plus fakes).
SCRIPT_TOOLS = ("sh", "sed", "head", "tr", "rm", "mv", "cat", "mkdir", "chmod", "sleep", "ssh-keygen", "mkfifo")


def render(name: str) -> str:
    return ga.render_template(name, NET).decode()


@pytest.fixture
def scripts(tmp_path) -> Path:
    out = tmp_path / "scripts"
    out.mkdir()
    for name in ga.template_bytes():
        (out / name.removesuffix(".j2")).write_bytes(ga.render_template(name, NET))
    return out


@pytest.fixture
def sandbox_bin(tmp_path) -> Path:
    """A PATH with only the tools the scripts need, so the host's own package managers don't leak in."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in SCRIPT_TOOLS:
        if found := shutil.which(tool):
            (bindir / tool).symlink_to(found)
    return bindir


def fake_tool(bindir: Path, name: str, exit_code: int = 0) -> Path:
    """A fake command that records its arguments in <bindir>/<name>.log."""
    path = bindir / name
    path.unlink(missing_ok=True)  # never write through a link to the real tool
    path.write_text(f'#!/bin/sh\necho "$*" >> "{bindir}/{name}.log"\nexit {exit_code}\n')
    path.chmod(0o755)
    return path


def run_sh(script: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)


# ---- every script ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ga.SCRIPTS)
def test_scripts_parse_with_sh_n(scripts, name):
    for shell in ("sh", "dash", "busybox"):
        if not shutil.which(shell):
            continue
        argv = [shell, *(["sh"] if shell == "busybox" else []), "-n", str(scripts / name)]
        proc = subprocess.run(argv, capture_output=True, text=True)
        assert proc.returncode == 0, f"{shell} -n {name}: {proc.stderr}"
    assert (scripts / name).read_text().startswith("#!/bin/sh\n")


def test_every_script_template_is_shipped():
    names = set(ga.template_bytes())
    for script in ga.SCRIPTS:
        assert f"{script}.j2" in names
    for unit in ga.UNITS:
        assert f"{unit}.j2" in names


# ---- first boot: dispatch on /etc/os-release ---------------------------------------------------
DISPATCH = [
    ("debian", "", "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openssh-server"),
    ("ubuntu", "debian", "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install"),
    ("kali", "debian", "apt-get update && "),
    ("raspbian", "debian", "apt-get update && "),
    ("pop", "ubuntu debian", "apt-get update && "),
    ("alpine", "", "apk add --no-cache openssh-server"),
    ("fedora", "", "yum install -y openssh-server"),
    ("rhel", "fedora", "yum install -y openssh-server"),
    ("centos", "rhel fedora", "yum install -y openssh-server"),
    ("rocky", "rhel centos fedora", "yum install -y openssh-server"),
    ("almalinux", "rhel centos fedora", "yum install -y openssh-server"),
    ("arch", "", "pacman -Sy --noconfirm openssh"),
    ("manjaro", "arch", "pacman -Sy --noconfirm openssh"),
    ("opensuse-leap", "suse opensuse", "zypper --non-interactive install openssh-server"),
    ("opensuse", "suse", "zypper --non-interactive install openssh-server"),
    ("suse", "", "zypper --non-interactive install openssh-server"),
    # ID unknown to banger, ID_LIKE decides (first known word wins)
    ("linuxmint", "ubuntu debian", "apt-get update && "),
    ("postmarketos", "alpine", "apk add --no-cache openssh-server"),
    ("ol", "fedora", "yum install -y openssh-server"),
    ("endeavouros", "arch", "pacman -Sy --noconfirm openssh"),
    ("sles_sap", "sles suse", "zypper --non-interactive install openssh-server"),
    ("weird", "nothing-known alpine debian", "apk add"),
]


def first_boot_env(tmp_path: Path, bindir: Path, os_release: str, plan: bool = True,
                   marker: bool = True, sshd: bool = False) -> dict[str, str]:
    release = tmp_path / "os-release"
    release.write_text(os_release)
    marker_path = tmp_path / "first-boot-pending"
    if marker:
        marker_path.touch()
    fake_sshd = tmp_path / "sshd"
    if sshd:
        fake_sshd.write_text("#!/bin/sh\n")
        fake_sshd.chmod(0o755)
    env = {"PATH": str(bindir), "OS_RELEASE_FILE": str(release),
           "BANGER_FIRST_BOOT_MARKER": str(marker_path), "BANGER_SSHD_PATHS": str(fake_sshd)}
    if plan:
        env["RUN_PLAN"] = "1"
    return env


@pytest.mark.parametrize("os_id,id_like,expected", DISPATCH)
def test_first_boot_dispatch(scripts, sandbox_bin, tmp_path, os_id, id_like, expected):
    text = f'NAME="Some Linux"\nID={os_id}\n' + (f'ID_LIKE="{id_like}"\n' if id_like else "")
    env = first_boot_env(tmp_path, sandbox_bin, text)
    proc = run_sh(scripts / "first-boot.sh", env)
    assert proc.returncode == 0, proc.stderr
    plan = [line for line in proc.stdout.splitlines() if line.startswith("plan: ")]
    assert len(plan) == 1 and plan[0].startswith(f"plan: {expected}"), proc.stdout
    assert (tmp_path / "first-boot-pending").exists(), "plan mode must not remove the marker"


def test_first_boot_prefers_dnf_when_present(scripts, sandbox_bin, tmp_path):
    fake_tool(sandbox_bin, "dnf")
    env = first_boot_env(tmp_path, sandbox_bin, 'ID="rocky"\nID_LIKE="rhel centos fedora"\n')
    proc = run_sh(scripts / "first-boot.sh", env)
    assert proc.stdout.splitlines()[-1] == "plan: dnf install -y openssh-server"


def test_first_boot_quoted_and_uppercase_values(scripts, sandbox_bin, tmp_path):
    env = first_boot_env(tmp_path, sandbox_bin, "ID='Debian'\nVERSION_ID=\"12\"\n")
    proc = run_sh(scripts / "first-boot.sh", env)
    assert proc.stdout.splitlines()[-1].startswith("plan: apt-get update")


def test_first_boot_unknown_distro_names_the_template(scripts, sandbox_bin, tmp_path):
    env = first_boot_env(tmp_path, sandbox_bin, "ID=plan9\nID_LIKE=inferno\n")
    proc = run_sh(scripts / "first-boot.sh", env)
    assert proc.returncode == 1
    assert "plan: " not in proc.stdout
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1
    assert "unknown distribution ID=plan9 ID_LIKE=inferno" in message
    assert "templates/first-boot.sh.j2" in message
    assert (tmp_path / "first-boot-pending").exists()


def test_first_boot_missing_os_release(scripts, sandbox_bin, tmp_path):
    env = first_boot_env(tmp_path, sandbox_bin, "")
    env["OS_RELEASE_FILE"] = str(tmp_path / "absent")
    proc = run_sh(scripts / "first-boot.sh", env)
    assert proc.returncode == 1 and "extend install_command" in proc.stderr


def test_first_boot_is_a_no_op_without_marker(scripts, sandbox_bin, tmp_path):
    fake_tool(sandbox_bin, "apt-get")
    env = first_boot_env(tmp_path, sandbox_bin, "ID=debian\n", plan=False, marker=False)
    proc = run_sh(scripts / "first-boot.sh", env)
    assert proc.returncode == 0
    assert "nothing to do" in proc.stdout
    assert not (sandbox_bin / "apt-get.log").exists()


def test_first_boot_skips_when_sshd_installed_and_clears_marker(scripts, sandbox_bin, tmp_path):
    fake_tool(sandbox_bin, "apt-get")
    env = first_boot_env(tmp_path, sandbox_bin, "ID=debian\n", plan=False, sshd=True)
    proc = run_sh(scripts / "first-boot.sh", env)
    assert proc.returncode == 0 and "already installed" in proc.stdout
    assert not (sandbox_bin / "apt-get.log").exists()
    assert not (tmp_path / "first-boot-pending").exists()


def test_first_boot_success_removes_marker(scripts, sandbox_bin, tmp_path):
    """Test seam: a fake apt-get on PATH stands in for the real one (a test cannot install packages)."""
    fake_tool(sandbox_bin, "apt-get")
    env = first_boot_env(tmp_path, sandbox_bin, "ID=ubuntu\nID_LIKE=debian\n", plan=False)
    proc = run_sh(scripts / "first-boot.sh", env)
    assert proc.returncode == 0, proc.stderr
    calls = (sandbox_bin / "apt-get.log").read_text().splitlines()
    assert calls == ["update", "install -y --no-install-recommends openssh-server"]
    assert not (tmp_path / "first-boot-pending").exists()
    # the next boot is a no-op
    again = run_sh(scripts / "first-boot.sh", env)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert len((sandbox_bin / "apt-get.log").read_text().splitlines()) == 2


def test_first_boot_failure_keeps_marker(scripts, sandbox_bin, tmp_path):
    fake_tool(sandbox_bin, "apk", exit_code=3)
    env = first_boot_env(tmp_path, sandbox_bin, "ID=alpine\n", plan=False)
    proc = run_sh(scripts / "first-boot.sh", env)
    assert proc.returncode == 1
    assert "retry on the next boot" in proc.stderr
    assert (sandbox_bin / "apk.log").read_text().strip() == "add --no-cache openssh-server"
    assert (tmp_path / "first-boot-pending").exists()


def test_first_boot_runs_under_busybox_sh(scripts, sandbox_bin, tmp_path):
    need("busybox")
    env = first_boot_env(tmp_path, sandbox_bin, 'ID=postmarketos\nID_LIKE="alpine"\n')
    proc = subprocess.run([shutil.which("busybox"), "sh", str(scripts / "first-boot.sh")], env=env,
                          capture_output=True, text=True)
    assert proc.stdout.splitlines()[-1] == "plan: apk add --no-cache openssh-server", proc.stderr


# ---- network bootstrap ---------------------------------------------------------------------------
@pytest.fixture
def fake_sys_net(tmp_path) -> Path:
    """/sys/class/net with lo, a virtual dummy0 (no device link) and a real NIC."""
    net = tmp_path / "sys-class-net"
    for name in ("dummy0", "lo"):
        (net / name).mkdir(parents=True)
    (net / "enp0s3").mkdir()
    (net / "enp0s3" / "device").mkdir()
    return net


def network_env(tmp_path: Path, scripts: Path, fake_sys_net: Path, cmdline: str, bindir: Path,
                plan: bool = True) -> dict[str, str]:
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    env = {"PATH": str(bindir), "BANGER_NETWORK_ENV": str(scripts / "network.env"),
           "BANGER_CMDLINE_FILE": str(tmp_path / "cmdline"), "BANGER_SYS_CLASS_NET": str(fake_sys_net),
           "BANGER_RESOLV_CONF": str(tmp_path / "resolv.conf")}
    if plan:
        env["RUN_PLAN"] = "1"
    return env


def plan_of(proc: subprocess.CompletedProcess) -> list[str]:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [line.removeprefix("plan: ") for line in proc.stdout.splitlines() if line.startswith("plan: ")]


def test_network_defaults_are_qemu_user_mode(scripts, sandbox_bin, tmp_path, fake_sys_net):
    fake_tool(sandbox_bin, "ip")
    env = network_env(tmp_path, scripts, fake_sys_net, "console=ttyS0 root=/dev/vda rw", sandbox_bin)
    assert plan_of(run_sh(scripts / "network.sh", env)) == [
        "ip link set lo up",
        "ip link set enp0s3 up",
        "ip addr replace 10.0.2.15/24 dev enp0s3",
        "ip route replace default via 10.0.2.2 dev enp0s3",
        f"nameserver 10.0.2.3 > {tmp_path / 'resolv.conf'}",
    ]


def test_network_kernel_cmdline_wins(scripts, sandbox_bin, tmp_path, fake_sys_net):
    fake_tool(sandbox_bin, "ip")
    cmdline = "console=ttyS0 banger.ip=172.16.0.2/30 banger.gw=172.16.0.1 banger.dns=1.1.1.1 quiet"
    env = network_env(tmp_path, scripts, fake_sys_net, cmdline, sandbox_bin)
    assert plan_of(run_sh(scripts / "network.sh", env)) == [
        "ip link set lo up",
        "ip link set enp0s3 up",
        "ip addr replace 172.16.0.2/30 dev enp0s3",
        "ip route replace default via 172.16.0.1 dev enp0s3",
        f"nameserver 1.1.1.1 > {tmp_path / 'resolv.conf'}",
    ]


def test_network_iface_override(scripts, sandbox_bin, tmp_path, fake_sys_net):
    fake_tool(sandbox_bin, "ip")
    env = network_env(tmp_path, scripts, fake_sys_net, "banger.iface=eth1", sandbox_bin)
    assert "ip link set eth1 up" in plan_of(run_sh(scripts / "network.sh", env))


def test_network_falls_back_to_ifconfig(scripts, sandbox_bin, tmp_path, fake_sys_net):
    fake_tool(sandbox_bin, "ifconfig")
    fake_tool(sandbox_bin, "route")
    env = network_env(tmp_path, scripts, fake_sys_net, "banger.ip=192.168.100.6/28 banger.gw=192.168.100.1",
                      sandbox_bin)
    assert plan_of(run_sh(scripts / "network.sh", env))[:3] == [
        "ifconfig lo 127.0.0.1 up",
        "ifconfig enp0s3 192.168.100.6 netmask 255.255.255.240 up",
        "route add default gw 192.168.100.1 enp0s3",
    ]


def test_network_without_any_tool_fails_clearly(scripts, sandbox_bin, tmp_path, fake_sys_net):
    env = network_env(tmp_path, scripts, fake_sys_net, "", sandbox_bin)
    proc = run_sh(scripts / "network.sh", env)
    assert proc.returncode == 1 and "install iproute2" in proc.stdout


def test_network_really_runs_and_replaces_dangling_resolv_symlink(scripts, sandbox_bin, tmp_path, fake_sys_net):
    fake_tool(sandbox_bin, "ip")
    env = network_env(tmp_path, scripts, fake_sys_net, "", sandbox_bin, plan=False)
    (tmp_path / "resolv.conf").symlink_to(tmp_path / "run" / "systemd" / "resolve" / "stub-resolv.conf")
    proc = run_sh(scripts / "network.sh", env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (sandbox_bin / "ip.log").read_text().splitlines() == [
        "link set lo up", "link set enp0s3 up", "addr replace 10.0.2.15/24 dev enp0s3",
        "route replace default via 10.0.2.2 dev enp0s3"]
    resolv = tmp_path / "resolv.conf"
    assert not resolv.is_symlink() and resolv.read_text() == "nameserver 10.0.2.3\n"


def test_network_env_file_holds_the_settings(scripts):
    text = (scripts / "network.env").read_text()
    assert "BANGER_IP=10.0.2.15/24\n" in text and "BANGER_GW=10.0.2.2\n" in text
    assert "BANGER_DNS=10.0.2.3\n" in text


# ---- agent, host keys ------------------------------------------------------------------------
def test_agent_announces_one_ready_line(scripts, sandbox_bin, tmp_path):
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("0f3c9a6e-1111-2222-3333-444455556666\n")
    consoles = [tmp_path / "ttyS0", tmp_path / "console"]
    for c in consoles:
        c.touch()
    env = {"PATH": str(sandbox_bin), "BANGER_BOOT_ID_FILE": str(boot_id),
           "BANGER_CONSOLES": " ".join(map(str, consoles)), "BANGER_SSH_DIR": str(tmp_path / "no-ssh")}
    proc = run_sh(scripts / "agent.sh", env)
    assert proc.returncode == 0, proc.stderr
    line = f"{ga.READY_PREFIX} 0f3c9a6e-1111-2222-3333-444455556666"
    for c in consoles:
        assert [x for x in c.read_text().splitlines() if x] == [line]
    assert proc.stdout.strip() == line


def test_agent_restores_the_cpu_weight_of_startup_weighted_units_after_the_boot(scripts, sandbox_bin, tmp_path):
    """systemd 252 keeps StartupCPUWeight= after the boot; the agent sets CPUWeight= again once
    the system is up (checked in a booted VM: ssh.service's cpu.weight 10000 -> 100)."""
    weighted = {name.removesuffix(".j2") for name, data in ga.template_bytes().items()
                if re.search(rb"^StartupCPUWeight=", data, re.M)}
    assert weighted == {"sshd-early.conf"} | {u for u in ga.STARTUP_WEIGHTED_UNITS if u.startswith("banger-")}
    assert set(ga.SSHD_UNITS) <= set(ga.STARTUP_WEIGHTED_UNITS)
    fake_tool(sandbox_bin, "systemctl")
    (tmp_path / "run-systemd").mkdir()
    (tmp_path / "boot_id").write_text("x\n")
    (tmp_path / "console").touch()
    env = {"PATH": str(sandbox_bin), "BANGER_BOOT_ID_FILE": str(tmp_path / "boot_id"),
           "BANGER_CONSOLES": str(tmp_path / "console"), "BANGER_SYSTEMD_RUN_DIR": str(tmp_path / "run-systemd")}
    assert run_sh(scripts / "agent.sh", env).returncode == 0
    log = sandbox_bin / "systemctl.log"
    want = ["is-system-running --wait"] + [f"set-property --runtime {u} CPUWeight=100" for u in ga.STARTUP_WEIGHTED_UNITS]
    deadline = time.monotonic() + 10  # the restore runs in the background
    while (log.read_text().splitlines() if log.exists() else []) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.read_text().splitlines() == want


def test_sshd_keys_generates_ed25519_once(scripts, sandbox_bin, tmp_path):
    need("ssh-keygen")
    ssh_dir = tmp_path / "etc-ssh"
    env = {"PATH": str(sandbox_bin), "BANGER_SSH_DIR": str(ssh_dir)}
    assert run_sh(scripts / "sshd-keys.sh", env).returncode == 0
    key = ssh_dir / "ssh_host_ed25519_key"
    first = key.read_bytes()
    assert b"OPENSSH PRIVATE KEY" in first
    assert (ssh_dir / "ssh_host_ed25519_key.pub").read_text().startswith("ssh-ed25519 ")
    assert run_sh(scripts / "sshd-keys.sh", env).returncode == 0
    assert key.read_bytes() == first


# ---- units and config ------------------------------------------------------------------------
def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


def words(d: dict[str, list[str]], key: str) -> list[str]:
    return " ".join(d.get(key, [])).split()


def test_network_unit_is_early_and_never_waits_for_udev_or_online():
    d = directives(render("banger-network.service.j2"))
    assert d["Service.Type"] == ["oneshot"]
    assert d["Service.ExecStart"] == [f"{ga.SCRIPTS_DIR}/network.sh"]
    assert d["Unit.DefaultDependencies"] == ["no"]
    assert d["Install.WantedBy"] == ["multi-user.target"]
    assert {"ssh.service", "sshd.service", "network.target"} <= set(words(d, "Unit.Before"))
    waits = words(d, "Unit.After") + words(d, "Unit.Wants") + words(d, "Unit.Requires")
    assert not [u for u in waits if "udev-settle" in u or "network-online" in u]


def test_first_boot_unit_is_marker_driven():
    d = directives(render("banger-first-boot.service.j2"))
    assert d["Unit.ConditionPathExists"] == [ga.FIRST_BOOT_MARKER]
    assert d["Service.Type"] == ["oneshot"]
    assert d["Service.ExecStart"] == [f"{ga.SCRIPTS_DIR}/first-boot.sh"]
    assert "banger-network.service" in words(d, "Unit.After")
    assert d["Install.WantedBy"] == ["multi-user.target"]


def test_agent_unit_follows_sshd_without_blocking_boot():
    d = directives(render("banger-agent.service.j2"))
    assert {"ssh.service", "sshd.service", "banger-network.service"} <= set(words(d, "Unit.After"))
    assert d["Service.Type"] == ["simple"] and d["Service.RemainAfterExit"] == ["yes"]
    assert d["Service.ExecStart"] == [f"{ga.SCRIPTS_DIR}/agent.sh"]
    assert d["Install.WantedBy"] == ["multi-user.target"]


def test_agent_waits_for_first_boot_only_when_the_image_lacks_sshd():
    for sshd_in_image in (False, True):
        d = directives(ga.render_template("banger-agent.service.j2", NET, sshd_in_image=sshd_in_image).decode())
        after = set(words(d, "Unit.After"))
        assert {"ssh.service", "sshd.service", "banger-network.service"} <= after
        assert ("banger-first-boot.service" in after) is not sshd_in_image
        # it does not wait for basic.target, but is still stopped at shutdown
        assert d["Unit.DefaultDependencies"] == ["no"]
        assert d["Unit.Conflicts"] == ["shutdown.target"] and d["Unit.Before"] == ["shutdown.target"]


def test_sshd_drop_in_starts_sshd_early_after_banger_units():
    d = directives(ga.render_template("sshd-early.conf.j2", NET, unit="ssh.service").decode())
    assert d["Unit.DefaultDependencies"] == ["no"]
    after = set(words(d, "Unit.After"))
    assert {"banger-network.service", "banger-sshd-keys.service", "systemd-remount-fs.service",
            "systemd-journald.socket"} <= after
    assert not [u for u in after if u in ("basic.target", "sysinit.target", "local-fs.target")]
    assert d["Unit.Conflicts"] == ["shutdown.target"] and d["Unit.Before"] == ["shutdown.target"]
    assert d["Service.ExecStartPre"] == [""]  # resets the image's `sshd -t`
    # the listener is favoured; the sessions it forks are not
    assert int(d["Service.Nice"][0]) < 0 and d["Service.CPUSchedulingResetOnFork"] == ["yes"]
    assert d["Service.CPUSchedulingPolicy"] == ["other"]  # without a policy systemd ignores ResetOnFork
    # only Debian's ssh.service loses its pre-start step (`sshd -t`); e.g. openSUSE's sshd.service
    # makes its host keys there
    other = directives(ga.render_template("sshd-early.conf.j2", NET, unit="sshd.service").decode())
    assert "Service.ExecStartPre" not in other
    assert {k: v for k, v in d.items() if k != "Service.ExecStartPre"} == other
    assert ga.SSHD_EARLY_DROP_INS == ("/etc/systemd/system/ssh.service.d/banger-ssh-early.conf",
                                      "/etc/systemd/system/sshd.service.d/banger-sshd-early.conf")


def test_udev_coldplug_is_ordered_after_sshd_only():
    d = directives(render("udev-trigger-after-sshd.conf.j2"))
    assert d == {"Unit.After": ["ssh.service sshd.service"]}
    assert ga.UDEV_TRIGGER_DROP_IN.startswith("/etc/systemd/system/systemd-udev-trigger.service.d/")


def test_sshd_keys_unit_runs_before_sshd_only_when_key_missing():
    d = directives(render("banger-sshd-keys.service.j2"))
    assert d["Unit.ConditionPathExists"] == ["!/etc/ssh/ssh_host_ed25519_key"]
    assert {"ssh.service", "sshd.service"} <= set(words(d, "Unit.Before"))


def test_preset_enables_every_unit():
    lines = [x for x in render("80-banger.preset.j2").splitlines() if x and not x.startswith("#")]
    assert lines == [f"enable {u}" for u in ga.UNITS]


def test_sshd_drop_in_allows_key_only_root_login():
    text = render("sshd_config.conf.j2")
    lines = text.splitlines()
    assert "PermitRootLogin prohibit-password" in lines
    assert "PasswordAuthentication no" in lines
    assert "reachable only from the host" in text


def test_units_pass_systemd_analyze_verify(tmp_path, scripts):
    need("systemd-analyze")
    host_units = Path("/usr/lib/systemd/system")
    if not (host_units / "sysinit.target").exists():
        pytest.skip("the host's systemd has no unit files to verify against")
    root = tmp_path / "root"
    unit_dir = root / "usr/lib/systemd/system"
    unit_dir.mkdir(parents=True)
    (root / ga.SCRIPTS_DIR.lstrip("/")).mkdir(parents=True)
    for target in host_units.glob("*.target"):
        shutil.copy(target, unit_dir, follow_symlinks=False)
    for script in ga.SCRIPTS:
        dest = root / ga.SCRIPTS_DIR.lstrip("/") / script
        shutil.copy(scripts / script, dest)
        dest.chmod(0o755)
    for unit in ga.UNITS:
        shutil.copy(scripts / unit, unit_dir / unit)
    # a stand-in for the image's sshd unit, with banger's drop-in
    stand_in = f"{ga.SCRIPTS_DIR}/agent.sh"  # any executable inside the root
    (unit_dir / "ssh.service").write_text(f"[Unit]\nAfter=network.target\n[Service]\nType=notify\n"
                                          f"ExecStartPre={stand_in}\nExecStart={stand_in}\n")
    drop_in = root / ga.SSHD_EARLY_DROP_INS[0].lstrip("/")
    drop_in.parent.mkdir(parents=True)
    drop_in.write_bytes(ga.render_template("sshd-early.conf.j2", NET, unit="ssh.service"))
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}",
                           *(str(unit_dir / u) for u in (*ga.UNITS, "ssh.service"))],
                          capture_output=True, text=True, env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc.stdout + proc.stderr
