"""How a VM is reached: its `Host NAME.vm` entry in the managed ssh config block, its host key in
banger's known_hosts (`<state>/ssh/known_hosts`, keyed by NAME.vm), and the ssh command line
`banger vm ssh` runs. The host key comes from the VM's serial console (the guest agent prints it
before its readiness line; only the VMM writes the console), so no `StrictHostKeyChecking no`.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path

from banger.core.config import Dirs
from banger.rootfs.sshkey import key_path
from banger.vm import sshconfig
from banger.vm.records import VMRecord


def known_hosts(dirs: Dirs) -> Path:
    return dirs.state / "ssh" / "known_hosts"


def ssh_config_file(settings: dict) -> Path:
    return sshconfig.config_path(settings)


def publish(dirs: Dirs, settings: dict, record: VMRecord) -> None:
    """Write the VM's ssh config entry and pin its host key (after it booted: address and key known)."""
    kh = known_hosts(dirs)
    if record.host_key:
        sshconfig.set_host_key(kh, record.name, record.host_key)
    sshconfig.set_entry(ssh_config_file(settings), sshconfig.HostEntry(
        name=record.name, hostname=record.address, port=record.ssh_port, identity=key_path(dirs.state),
        known_hosts=kh), lock_dir=dirs.state / "ssh")


def withdraw(dirs: Dirs, settings: dict, name: str) -> None:
    sshconfig.remove_entry(ssh_config_file(settings), name, lock_dir=dirs.state / "ssh")
    sshconfig.remove_host_key(known_hosts(dirs), name)


def ssh_argv(dirs: Dirs, record: VMRecord, command: list[str], tty: bool) -> list[str]:
    """`ssh` with every option spelled out (it works whatever the user's ssh config says)."""
    argv = ["ssh", "-F", "none", "-i", str(key_path(dirs.state)), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known_hosts(dirs)}", "-o", f"HostKeyAlias={record.name}.vm",
            "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR", "-p", str(record.ssh_port)]
    if command:
        argv.append("-t" if tty else "-T")
    # `--` before the destination: ssh parses no option after it (it would after the host)
    argv += ["--", f"root@{record.address}"]
    if command:
        argv.append(shlex.join(command) if len(command) > 1 else command[0])
    return argv


def ssh_hint(settings: dict, name: str) -> str:
    """The command that reaches the VM: `ssh NAME.vm`, with -F when the managed block is not in
    the user's own ~/.ssh/config (BANGER_SSH_CONFIG or "ssh_config" point elsewhere)."""
    path = ssh_config_file(settings)
    if path.expanduser() == Path("~/.ssh/config").expanduser():
        return f"ssh {name}.vm"
    return f"ssh -F {shlex.quote(str(path))} {name}.vm"


def interactive() -> bool:
    return os.isatty(0) and os.isatty(1)
