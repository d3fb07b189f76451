"""Real QEMU boots of a real Debian cloud kernel with no root filesystem: the kernel prints its
banner, panics (no root=) and, with panic=-1 and -no-reboot, QEMU exits. No rootfs needed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from banger import hypervisor, qemu, vm as vmmod
from banger.vm import VMConfig, VMError
from tests.conftest import need
from tests.smoke_kernel import smoke_kernel  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parent.parent
TCG_SLACK = 120.0  # the panic comes after ~6 s alone; allow for a loaded machine

# A process that runs a VM until it is signalled (for the SIGTERM / SIGKILL tests).
VM_SCRIPT = """
import sys
from pathlib import Path
from banger import hypervisor, kvm, vm
choice = hypervisor.choose("qemu", kvm_status=lambda: kvm.KvmStatus(False, "test: TCG"))
v = vm.create(choice, vm.VMConfig(kernel=Path(sys.argv[1]), run_dir=Path(sys.argv[2]), cmdline="panic=-1"))
with v:
    print(v.process.pid, v.ssh_port, flush=True)
    v.wait_for_console_line("^never printed$", timeout=300)
"""


@pytest.fixture
def tcg_choice() -> hypervisor.Choice:
    """QEMU as `auto` would pick it here (TCG where /dev/kvm cannot run vCPUs)."""
    need("qemu-system-x86_64")
    return hypervisor.choose("qemu")


def _processes_mentioning(word: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if word.encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def _assert_gone(pid: int, run_dir: Path, port: int, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and (_processes_mentioning(f"banger-{run_dir.name}") or vmmod.port_listening(port)):
        time.sleep(0.1)
    assert _processes_mentioning(f"banger-{run_dir.name}") == [], f"a VM process of {run_dir} is still running"
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    assert not vmmod.port_listening(port) and vmmod.port_is_free(port), f"port {port} is still taken"


def test_kernel_boots_to_its_panic_and_everything_is_cleaned_up(smoke_kernel, tcg_choice, tmp_path):
    run_dir = vmmod.new_run_dir(tmp_path / "state")
    vm = vmmod.create(tcg_choice, VMConfig(kernel=smoke_kernel, run_dir=run_dir, cmdline="panic=-1"))
    with vm:
        port = vm.ssh_port
        assert vmmod.port_listening(port), "QEMU should forward the SSH port from the start"
        banner = vm.wait_for_console_line(r"Linux version \d", timeout=TCG_SLACK)
        assert "cloud-amd64" in banner
        vm.wait_for_console_line(r"Kernel panic - not syncing", timeout=TCG_SLACK)
        assert vm.wait_exit(TCG_SLACK), "panic=-1 with -no-reboot should end QEMU"
        pid = vm.process.pid
        argv = vm.argv(port)
    _assert_gone(pid, run_dir, port)
    # the TCG CPU model without XSAVEOPT (the faster boot) is one this QEMU accepts: it just ran
    assert argv[argv.index("-cpu") + 1] == qemu.TCG_CPU == "max,xsaveopt=off"
    console = vm.console_log.read_text(errors="replace")
    assert console.count("Linux version") == 1 and "Kernel panic" in console
    assert "banger.ip=10.0.2.15/24 banger.gw=10.0.2.2 banger.dns=10.0.2.3" in console  # the command line
    assert sorted(p.name for p in run_dir.iterdir()) == ["console.log", "vmm.log"]  # no overlay left


def test_timeout_error_has_the_console_tail_and_log_path_and_stop_cleans_up(smoke_kernel, tcg_choice, tmp_path):
    run_dir = vmmod.new_run_dir(tmp_path / "state")
    vm = vmmod.create(tcg_choice, VMConfig(kernel=smoke_kernel, run_dir=run_dir, cmdline="panic=-1"))
    vm.start()
    try:
        port, pid = vm.ssh_port, vm.process.pid
        vm.wait_for_console_line(r"Linux version", timeout=TCG_SLACK)
        with pytest.raises(VMError) as err:
            vm.wait_for_console_line(r"^BANGER_READY", timeout=1.0)
        assert vm.running
    finally:
        vm.stop()
    message = str(err.value)
    first, *rest = message.splitlines()
    assert first == "the VM (qemu/tcg/pc) did not print '^BANGER_READY' on its console within 1s"
    assert rest[-1] == f"full console log: {vm.console_log}"
    tail = [line.removeprefix("  | ") for line in rest[1:-1]]
    assert 1 <= len(tail) <= 40
    console_lines = vm.console_log.read_text(errors="replace").replace("\r", "").splitlines()
    assert tail[0] in console_lines  # the tail shows real console lines, in order
    assert console_lines.index(tail[0]) + len(tail) <= len(console_lines)
    _assert_gone(pid, run_dir, port)


def test_missing_kernel_is_one_line(tmp_path, tcg_choice):
    vm = vmmod.create(tcg_choice, VMConfig(kernel=tmp_path / "no-such-vmlinuz", run_dir=tmp_path))
    with pytest.raises(VMError, match=r"^the VM's kernel .*no-such-vmlinuz is missing or unreadable; rebuild"):
        vm.start()
    assert vm.process is None


def test_qemu_refusing_to_boot_shows_what_qemu_said(tmp_path, tcg_choice):
    not_a_kernel = tmp_path / "vmlinuz"
    not_a_kernel.write_bytes(b"this is not a kernel\n" * 100)
    run_dir = vmmod.new_run_dir(tmp_path / "state")
    vm = vmmod.create(tcg_choice, VMConfig(kernel=not_a_kernel, run_dir=run_dir))
    with pytest.raises(VMError) as err:
        with vm:  # QEMU may fail before or after it bound the forwarded port
            vm.wait_for_console_line("Linux version", timeout=30)
    message = str(err.value)
    assert "exited with code 1" in message
    assert "qemu said (vmm.log)" in message and "kernel" in message.split("qemu said", 1)[1].lower()
    assert not vm.running


def _run_vm_in_subprocess(smoke_kernel: Path, run_dir: Path) -> tuple[subprocess.Popen, int, int]:
    proc = subprocess.Popen([sys.executable, "-c", VM_SCRIPT, str(smoke_kernel), str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    pid, port = map(int, line.split())
    assert _processes_mentioning(f"banger-{run_dir.name}") == [pid]
    # let the guest run a moment, so the VM is really busy
    deadline = time.monotonic() + TCG_SLACK
    while "Linux version" not in (run_dir / "console.log").read_text(errors="replace"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return proc, pid, port


@pytest.mark.parametrize("sig, says", [(signal.SIGTERM, "Terminated: interrupted by SIGTERM"),
                                       (signal.SIGINT, "KeyboardInterrupt")])
def test_signal_to_a_process_running_a_vm_cleans_the_vm_up(smoke_kernel, tmp_path, sig, says):
    need("qemu-system-x86_64")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    proc, pid, port = _run_vm_in_subprocess(smoke_kernel, run_dir)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert says in proc.stderr.read()
    _assert_gone(pid, run_dir, port, within=1.0)  # stop() already waited for QEMU


def test_sigkill_to_a_process_running_a_vm_takes_the_vm_down(smoke_kernel, tmp_path):
    need("qemu-system-x86_64")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    proc, pid, port = _run_vm_in_subprocess(smoke_kernel, run_dir)
    proc.kill()
    proc.wait(timeout=30)
    _assert_gone(pid, run_dir, port)  # PR_SET_PDEATHSIG
