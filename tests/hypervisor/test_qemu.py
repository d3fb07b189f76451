"""Real QEMU boots of a real Debian cloud kernel with no root filesystem: the kernel prints its
banner and panics (no root=). With panic=-1 it reboots at once and, with -no-reboot, QEMU exits;
with panic=0 it halts after printing the panic and QEMU keeps running until the test stops it.
No rootfs needed.

The panic comes early (~1.6 s of guest time here, ~2 s of wall time under TCG), so a test that
needs a running VM uses panic=0: it must not depend on how fast the guest reaches its panic."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from banger.hypervisor import backends, choice as hypervisor, ports, qemu, vm as vmmod
from banger.hypervisor.vm import VMConfig, VMError
from tests.conftest import need
from tests.smoke_kernel import smoke_kernel  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[2]
TCG_SLACK = 120.0  # the panic comes after ~2 s alone; allow for a loaded machine
# panic=0: after its panic the kernel halts with interrupts off and prints nothing more, and
# QEMU runs on. The VM is then up, and its console final, until the test stops it.
HALT_AFTER_PANIC = "panic=0"
PANIC_END = r"---\[ end Kernel panic - not syncing"  # the panic's last console line

# A process that runs a VM until it is signalled (for the SIGTERM / SIGKILL tests); the guest
# halts after its panic (panic=0), so the VM is still there whenever the signal comes.
VM_SCRIPT = f"""
import sys
from pathlib import Path
from banger.hypervisor import backends, choice as hypervisor, kvm, vm
choice = hypervisor.choose("qemu", kvm_status=lambda: kvm.KvmStatus(False, "test: TCG"))
v = backends.create(choice, vm.VMConfig(kernel=Path(sys.argv[1]), run_dir=Path(sys.argv[2]),
                                        cmdline="{HALT_AFTER_PANIC}"))
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
    while time.monotonic() < deadline and (_processes_mentioning(f"banger-{run_dir.name}") or ports.port_listening(port)):
        time.sleep(0.1)
    assert _processes_mentioning(f"banger-{run_dir.name}") == [], f"a VM process of {run_dir} is still running"
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    assert not ports.port_listening(port) and ports.port_is_free(port), f"port {port} is still taken"


def test_kernel_boots_to_its_panic_and_everything_is_cleaned_up(smoke_kernel, tcg_choice, tmp_path):
    run_dir = vmmod.new_run_dir(tmp_path / "state")
    vm = backends.create(tcg_choice, VMConfig(kernel=smoke_kernel, run_dir=run_dir, cmdline="panic=-1"))
    with vm:
        port = vm.ssh_port
        assert ports.port_listening(port), "QEMU should forward the SSH port from the start"
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
    vm = backends.create(tcg_choice, VMConfig(kernel=smoke_kernel, run_dir=run_dir, cmdline=HALT_AFTER_PANIC))
    vm.start()
    try:
        port, pid = vm.ssh_port, vm.process.pid
        vm.wait_for_console_line(PANIC_END, timeout=TCG_SLACK)  # the console is final from here on
        with pytest.raises(VMError) as err:
            vm.wait_for_console_line(r"^BANGER_READY", timeout=1.0)
        assert vm.running, "with panic=0 the halted guest keeps QEMU running"
    finally:
        vm.stop()
    message = str(err.value)
    first, *rest = message.splitlines()
    assert first == "the VM (qemu/tcg/pc) did not print '^BANGER_READY' on its console within 1s"
    assert rest[-1] == f"full console log: {vm.console_log}"
    assert rest[0] == f"last {vmmod.CONSOLE_TAIL_LINES} console lines:"
    tail = [line.removeprefix("  | ") for line in rest[1:-1]]
    console_lines = vm.console_log.read_text(errors="replace").replace("\r", "").splitlines()
    assert len(console_lines) > vmmod.CONSOLE_TAIL_LINES  # a whole boot log, longer than the tail
    assert tail == console_lines[-vmmod.CONSOLE_TAIL_LINES:]  # the console's real last lines
    assert "Kernel panic - not syncing" in "\n".join(tail)
    _assert_gone(pid, run_dir, port)


def test_missing_kernel_is_one_line(tmp_path, tcg_choice):
    vm = backends.create(tcg_choice, VMConfig(kernel=tmp_path / "no-such-vmlinuz", run_dir=tmp_path))
    with pytest.raises(VMError, match=r"^the VM's kernel .*no-such-vmlinuz is missing or unreadable; rebuild"):
        vm.start()
    assert vm.process is None


def test_qemu_refusing_to_boot_shows_what_qemu_said(tmp_path, tcg_choice):
    not_a_kernel = tmp_path / "vmlinuz"
    not_a_kernel.write_bytes(b"this is not a kernel\n" * 100)
    run_dir = vmmod.new_run_dir(tmp_path / "state")
    vm = backends.create(tcg_choice, VMConfig(kernel=not_a_kernel, run_dir=run_dir))
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


# ---- TCG boot shortcuts: PVH entry into the uncompressed vmlinux, kernel arguments ----------------
@pytest.fixture(scope="session")
def smoke_vmlinux(smoke_kernel, fixture_cache) -> Path:
    """The smoke kernel's uncompressed ELF (as the stage-kernel step extracts it)."""
    from banger.kernel import vmlinux

    dest = fixture_cache / "smoke-kernel" / "vmlinux"
    if not dest.exists():
        partial = dest.with_suffix(".partial")
        vmlinux.extract(smoke_kernel, partial)
        os.replace(partial, dest)
    return dest


def _elf_with_notes(path: Path, notes: bytes) -> Path:
    """A minimal 64-bit little-endian ELF whose one program header is a PT_NOTE segment."""
    import struct
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, 64)  # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, 1)  # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", qemu.PT_NOTE, 4, 64 + 56, 0, 0, len(notes), len(notes), 4)
    path.write_bytes(bytes(header) + phdr + notes)
    return path


def _note(name: bytes, note_type: int, desc: bytes) -> bytes:
    import struct
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name), len(desc), note_type) + pad(name) + pad(desc)


def test_pvh_entry_is_found_only_in_an_elf_with_the_xen_note(tmp_path, smoke_kernel, smoke_vmlinux):
    assert qemu.has_pvh_entry(smoke_vmlinux)  # Debian's kernels have CONFIG_PVH
    assert not qemu.has_pvh_entry(smoke_kernel)  # a bzImage
    other = _note(b"GNU\0", 3, b"\x01" * 20) + _note(b"Xen\0", 6, b"linux\0")
    assert not qemu.has_pvh_entry(_elf_with_notes(tmp_path / "no-pvh", other))
    assert qemu.has_pvh_entry(_elf_with_notes(tmp_path / "pvh", other + _note(b"Xen\0", 18, b"\0" * 8)))
    assert not qemu.has_pvh_entry(tmp_path / "missing")
    (tmp_path / "short").write_bytes(b"\x7fELF")
    assert not qemu.has_pvh_entry(tmp_path / "short")


def test_tcg_boots_the_vmlinux_through_pvh_with_the_tcg_kernel_arguments(smoke_kernel, smoke_vmlinux, tcg_choice,
                                                                         tmp_path):
    if tcg_choice.accel != "tcg" or tcg_choice.machine != "pc":
        pytest.skip(f"this host boots {tcg_choice.accel}/{tcg_choice.machine}, not tcg/pc")
    run_dir = vmmod.new_run_dir(tmp_path / "state")
    vm = backends.create(tcg_choice, VMConfig(kernel=smoke_kernel, vmlinux=smoke_vmlinux, run_dir=run_dir,
                                           cmdline="panic=-1"))
    with vm:
        argv = vm.argv(vm.ssh_port)
        vm.wait_for_console_line(r"Kernel panic - not syncing", timeout=TCG_SLACK)
        assert vm.wait_exit(TCG_SLACK)
    assert argv[argv.index("-kernel") + 1] == str(smoke_vmlinux)
    console = vm.console_log.read_text(errors="replace")
    assert console.count("Linux version") == 1
    command_line = next(line for line in console.splitlines() if "Command line:" in line)
    assert command_line.split()[-2:] == [qemu.TCG_PC_CMDLINE, "panic=-1"]  # the user's arguments come last
    two_cpus = backends.create(tcg_choice, VMConfig(kernel=smoke_kernel, run_dir=tmp_path, vcpus=2))
    assert qemu.TCG_PC_CMDLINE not in two_cpus.cmdline()  # it would keep the second vCPU offline


def test_kvm_keeps_the_bzimage_and_the_kernels_defaults(smoke_kernel, smoke_vmlinux, tmp_path):
    kvm_choice = hypervisor.Choice(backend="qemu", accel="kvm", machine="microvm", binary="qemu-system-x86_64",
                                   reason="test")
    vm = backends.create(kvm_choice, VMConfig(kernel=smoke_kernel, vmlinux=smoke_vmlinux, run_dir=tmp_path))
    argv = vm.argv(2222)
    assert argv[argv.index("-kernel") + 1] == str(smoke_kernel)
    assert qemu.TCG_PC_CMDLINE not in vm.cmdline()
