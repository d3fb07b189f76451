"""Step 7, boot: boot the staged image, wait until it is ready, probe it over SSH, shut it down.

Readiness is the guest agent's `BANGER_READY <boot-id>` console line, then an SSH login with
banger's managed key. The probe reads /etc/os-release, `id -u` and, under systemd, the state of
banger's units, the system state and the units that failed so far (the probe does not wait for
the boot's remaining jobs: that would cost ~8-10 s under TCG, and early failures show already);
the result JSON is the step's output, keyed by the rootfs, kernel and boot config (not by the
backend `auto` picks, so a cached build never probes /dev/kvm). On any failure the error
carries the console's last lines and the path of the full log under <state>/boot-runs/<run>/.
"""
from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from typing import TYPE_CHECKING

from banger.core import config
from banger.core.errors import BuildError
from banger.engine import tasks as engine
from banger.engine.spec import BuildSpec

if TYPE_CHECKING:  # the VM machinery is imported when a boot runs, not when a cached build checks
    from banger.hypervisor.vm import VM

VERSION = "4"  # 4: the probe lists failed units
READY_PATTERN = r"^\s*BANGER_READY\b"
SSH_USER = "root"
# Every console byte is an emulated UART write: keep the kernel to warnings and systemd to failures
# (both still reach the console, so a failed boot's console tail keeps its cause). The user's
# boot.cmdline comes after these and wins (e.g. "loglevel=7 systemd.show_status=1").
QUIET_CONSOLE = "loglevel=4 systemd.show_status=error"
# A refused or reset connection costs the guest next to nothing (its kernel answers, sshd never
# sees it), so retry soon: the console line may come just before sshd listens (an image whose
# sshd unit is not Type=notify).
LOGIN_RETRY_AFTER = 0.25
POWEROFF_RETRY_AFTER = 20.0  # seconds before a second, forced, poweroff request
DEFAULT_UNITS = ("banger-identity.service", "banger-network.service", "banger-sshd-keys.service",
                 "banger-first-boot.service", "banger-agent.service")


@dataclass(frozen=True)
class BootConfig:
    """What the user controls about the boot; all of it but `timeout` keys the record."""
    hypervisor: str = "auto"
    memory_mib: int = 1024
    vcpus: int = 1
    cmdline: str = ""  # extra kernel arguments
    timeout: float = 300.0  # seconds from start to SSH login (TCG is slow)
    shutdown_timeout: float = 60.0

    def key_params(self) -> dict:
        params = asdict(self)
        del params["timeout"], params["shutdown_timeout"]
        return params

    @classmethod
    def from_settings(cls, spec: BuildSpec, settings: dict) -> "BootConfig":
        """`hypervisor=` from the build words; the rest from config.json's "boot" object."""
        boot = settings.get("boot") or {}
        known = {k: boot[k] for k in ("memory_mib", "vcpus", "cmdline", "timeout", "shutdown_timeout")
                 if k in boot}
        return cls(hypervisor=spec.hypervisor, **known)


def units() -> tuple[str, ...]:
    try:
        from banger.rootfs.guest_assets import UNITS
        return tuple(UNITS)
    except ImportError:
        return DEFAULT_UNITS


def guest_cmdline(user: str = "", ssh_key: str | None = None) -> str:
    """The kernel arguments the boot step appends to the backend's: reboot (so the VMM exits) on
    a panic, a quiet console, the public key `ssh_key` root's authorized_keys gets (identity.sh;
    the image holds no user's key), then the user's boot.cmdline (later words win)."""
    from banger.rootfs.guest_assets import ssh_key_word

    key = ssh_key_word(ssh_key) if ssh_key else ""
    return " ".join(w for w in ["panic=-1", QUIET_CONSOLE, key, user] if w).strip()


def boot_and_probe(rootfs: Path, kernel: Path, initrd: Path | None, config: BootConfig, dirs: config.Dirs,
                   *, vmlinux: Path | None = None, log: Callable[[str], None] = lambda msg: None) -> dict:
    """Boot, wait for readiness, probe, shut down; the probe result. Raises VMError (with the
    console tail) or hypervisor.HypervisorError. Never leaves the VM running."""
    from banger.hypervisor import choice as hypervisor
    from banger.hypervisor.vm import VMConfig, VMError, new_run_dir
    from banger.hypervisor.backends import create

    choice = hypervisor.choose(config.hypervisor)
    log(f"boot: {choice.backend}/{choice.accel}/{choice.machine}: {choice.reason}")
    from banger.rootfs.sshkey import ensure_key  # another module's concern; imported only when booting

    key = ensure_key(dirs.state)
    run_dir = new_run_dir(dirs.state)
    vm = create(choice, VMConfig(kernel=kernel, initrd=initrd, rootfs=rootfs, vmlinux=vmlinux, run_dir=run_dir,
                                 memory_mib=config.memory_mib, vcpus=config.vcpus,
                                 cmdline=guest_cmdline(config.cmdline, key.public_line)))
    timings: dict[str, float] = {}
    start = time.monotonic()
    with vm:
        deadline = start + config.timeout
        vm.wait_for_console_line(READY_PATTERN, timeout=config.timeout,
                                 what="BANGER_READY (the guest agent's readiness line)")
        timings["console_ready"] = round(time.monotonic() - start, 2)
        client = ssh_login(vm, key.private_path, deadline)
        timings["ssh_ready"] = round(time.monotonic() - start, 2)
        try:
            probe = run_probe(client, units())
        except VMError as exc:
            raise vm.failure(str(exc)) from None
        timings["probe"] = round(time.monotonic() - start - timings["ssh_ready"], 2)

        def poweroff(command: str) -> Callable[[], None]:
            return lambda: client.exec_command(command, timeout=5)

        stopping = time.monotonic()
        try:
            # A poweroff queued while boot jobs are still running has (rarely) been lost; then
            # ask again with --force (units are not stopped; the disk is a throwaway overlay).
            clean = vm.shutdown(poweroff("systemctl poweroff || poweroff"),
                                timeout=min(POWEROFF_RETRY_AFTER, config.shutdown_timeout))
            if not clean:
                clean = vm.shutdown(poweroff("systemctl poweroff --force || poweroff -f"),
                                    timeout=config.shutdown_timeout)
        finally:
            client.close()
        timings["shutdown"] = round(time.monotonic() - stopping, 2)
    if probe["failed_units"]:
        log(f"boot: units failed in the guest: {', '.join(probe['failed_units'])}")
    problems = probe_problems(probe)
    if problems:
        raise vm.failure(f"the VM booted but its probe failed: {'; '.join(problems)}")
    return {"backend": choice.backend, "accel": choice.accel, "machine": choice.machine, "reason": choice.reason,
            "memory_mib": config.memory_mib, "vcpus": config.vcpus, "clean_shutdown": clean,
            "seconds": timings, "console_log": str(vm.console_log), **probe}


def ssh_login(vm: VM, private_key: Path, deadline: float):
    """An SSH session as root with the managed key, retried until the deadline (sshd may take
    connections before it can serve them)."""
    import paramiko

    pkey = paramiko.Ed25519Key.from_private_key_file(str(private_key))
    host, port = vm.ssh_address
    # no separate banner check: each connection makes the guest's sshd fork, seconds under TCG
    last_error = "no attempt"
    while True:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.MissingHostKeyPolicy())  # a fresh VM: nothing to pin
        try:
            client.connect(host, port, username=SSH_USER, pkey=pkey, look_for_keys=False, allow_agent=False,
                           timeout=10, banner_timeout=30, auth_timeout=30)
            return client
        except paramiko.AuthenticationException as exc:
            client.close()
            raise vm.failure(f"sshd at {host}:{port} refused banger's key for {SSH_USER} ({exc}); "
                             f"was the image built by this banger (the inject step writes the key)?") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            last_error = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline or not vm.running:
            raise vm.failure(f"could not log in to the VM over SSH at {host}:{port} ({last_error})")
        time.sleep(LOGIN_RETRY_AFTER)


PROBE_SCRIPT = """\
echo '@@os-release'; cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release 2>/dev/null
echo '@@uid'; id -u
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    echo '@@units'; systemctl show --property=Id,LoadState,ActiveState,SubState,Result {units}
    echo '@@system-state'; systemctl is-system-running
    echo '@@failed-units'; systemctl list-units --failed --plain --no-legend --full
fi
"""


def run_probe(client, unit_names: tuple[str, ...], timeout: float = 60.0) -> dict:
    """What the boot step records: os-release, the login's uid, banger's units' states, the
    system state and the units that failed so far (systemd only).

    One SSH command for all of it: under TCG every extra session costs the guest seconds."""
    script = PROBE_SCRIPT.format(units=" ".join(shlex.quote(u) for u in unit_names))
    try:
        _, stdout, _ = client.exec_command(script, timeout=timeout)
        text = stdout.read().decode("utf-8", "replace")
        stdout.channel.recv_exit_status()
    except Exception as exc:  # paramiko raises a variety; the user gets one line
        from banger.hypervisor.vm import VMError

        raise VMError(f"the SSH probe failed: {type(exc).__name__}: {exc}") from None
    sections: dict[str, str] = {}
    current = None
    for line in text.splitlines(keepends=True):
        if line.startswith("@@"):
            current = line[2:].strip()
            sections[current] = ""
        elif current is not None:
            sections[current] += line
    uid_text = sections.get("uid", "").strip()
    units = parse_systemctl_show(sections["units"], unit_names) if "units" in sections else {}
    return {"os_release": parse_os_release(sections.get("os-release", "")),
            "uid": int(uid_text) if uid_text.isdigit() else None,
            "init": "systemd" if "units" in sections else "other", "units": units,
            "system_state": sections.get("system-state", "").strip() or None,
            "failed_units": [line.split()[0] for line in sections.get("failed-units", "").splitlines() if line.strip()]}


def parse_os_release(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            try:
                values[key] = shlex.split(value)[0] if value else ""
            except (ValueError, IndexError):
                values[key] = value
    return values


def parse_systemctl_show(text: str, unit_names: tuple[str, ...]) -> dict[str, dict]:
    """`systemctl show` prints one block of KEY=VALUE lines per unit, blank-line separated."""
    blocks = [dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
              for block in text.strip().split("\n\n") if block.strip()]
    by_id = {b.get("Id"): b for b in blocks}
    result = {}
    for i, name in enumerate(unit_names):
        block = by_id.get(name) or (blocks[i] if i < len(blocks) else {})
        result[name] = {"load": block.get("LoadState", "unknown"), "active": block.get("ActiveState", "unknown"),
                        "sub": block.get("SubState", "unknown"), "result": block.get("Result", "unknown")}
    return result


def probe_problems(probe: dict) -> list[str]:
    """Why a probe result is not a pass: a unit not loaded or failed, not root, no os-release."""
    problems = []
    if probe.get("uid") != 0:
        problems.append(f"`id -u` gave {probe.get('uid')!r}, expected 0")
    if not probe.get("os_release"):
        problems.append("no /etc/os-release")
    for name, state in (probe.get("units") or {}).items():
        if state["load"] != "loaded":
            problems.append(f"{name} is {state['load']}")
        elif state["active"] == "failed" or state["result"] not in ("success", "unknown"):
            problems.append(f"{name} {state['active']} ({state['result']}); see `journalctl -u {name}`")
    return problems


# ---- doit wiring -------------------------------------------------------------------------------
def check_hypervisor(spec: BuildSpec) -> None:
    """Refuse a hypervisor= that cannot run here before any step runs (one line)."""
    from banger.hypervisor.choice import HypervisorError, check

    try:
        check(spec.hypervisor)
    except HypervisorError as exc:
        raise BuildError(str(exc)) from None


def tasks(build: engine.Build, spec: BuildSpec) -> Iterator[dict]:
    dirs = build.context.get("dirs") or config.default_dirs(build.store.root)
    boot_config = BootConfig.from_settings(spec, config.load_config(dirs))

    def inputs() -> dict:
        staged = build.records["stage-kernel"].outputs
        return {name: staged[name] for name in ("rootfs", "kernel", "initrd", "vmlinux") if name in staged}

    def work(run: engine.StepRun) -> dict[str, str]:
        """Boot the image, wait for readiness, probe it over SSH, shut it down."""
        from banger.hypervisor.choice import HypervisorError
        from banger.hypervisor.vm import VMError

        paths = {name: run.path(digest) for name, digest in run.inputs.items()}
        try:
            result = boot_and_probe(paths["rootfs"], paths["kernel"], paths.get("initrd"), boot_config, dirs,
                                    vmlinux=paths.get("vmlinux"), log=build.log)
        except (VMError, HypervisorError) as exc:
            raise BuildError(str(exc)) from None
        run.info.update({"backend": f"{result['backend']}/{result['accel']}/{result['machine']}",
                         "seconds": result["seconds"]})
        out = run.stage / "result.json"
        out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
        return {"result": run.store.ingest_file(out)}

    yield engine.step_task(build, name="boot", version=VERSION, work=work, inputs=inputs,
                           params=boot_config.key_params(), deps=("stage-kernel",),
                           doc="boot the image and probe it over SSH")
