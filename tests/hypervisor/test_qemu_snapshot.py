"""QEMU's half of a snapshot with the real QEMU under TCG and the smoke kernel: save a running VM
over QMP, load it into a new QEMU (it comes up paused, with the resume serial port), let it run
on; a truncated state file is a one-line QMPError, not a hang. (The guest's half and vm create:
tests/rootfs/test_resume.py, tests/vm/test_snapshot_e2e.py.)"""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from banger.hypervisor import backends, qmp, vm as vmmod
from banger.hypervisor.vm import VMConfig
from tests.hypervisor.test_qemu import TCG_SLACK, tcg_choice  # noqa: F401 (a fixture)
from tests.smoke_kernel import smoke_kernel  # noqa: F401 (a fixture)


def config(kernel: Path, run_dir: Path, incoming: str | None = None) -> VMConfig:
    # panic=0: the smoke guest halts at its panic and stays up, as a guest waiting for its host would
    return VMConfig(kernel=kernel, run_dir=run_dir, network=False, memory_mib=256, cmdline="panic=0",
                    control_socket=run_dir / "qmp.sock", resume_socket=run_dir / "resume.sock", incoming=incoming)


def test_a_saved_vm_loads_paused_into_a_new_qemu_and_runs_on(smoke_kernel, tcg_choice, tmp_path):
    state = tmp_path / "state.bin"
    first = backends.create(tcg_choice, config(smoke_kernel, vmmod.new_run_dir(tmp_path / "a")))
    with first:
        first.wait_for_console_line(r"Kernel panic - not syncing", timeout=TCG_SLACK)
        assert (first.run_dir / "resume.sock").is_socket()  # the second serial port's socket
        info = qmp.save_state(first.run_dir / "qmp.sock", f"exec:cat > {shlex.quote(str(state))}", timeout=60)
        assert info["status"] == "completed"
        assert qmp.command(first.run_dir / "qmp.sock", "query-status")["status"] == "postmigrate"
    assert state.stat().st_size > 1 << 20

    second = backends.create(tcg_choice, config(smoke_kernel, vmmod.new_run_dir(tmp_path / "b"),
                                                incoming=f"exec:cat {shlex.quote(str(state))}"))
    with second:
        sock = second.run_dir / "qmp.sock"
        qmp.wait_loaded(sock, lambda: second.running, timeout=60)
        assert qmp.command(sock, "query-status")["status"] == "paused"  # the saved run state came along
        qmp.resume(sock)
        assert qmp.command(sock, "query-status")["status"] == "running"
        assert second.running
    # the new QEMU never booted the kernel: its console has nothing of a boot
    assert "Linux version" not in second.console_log.read_text(errors="replace")


def test_a_truncated_state_fails_to_load_with_one_line(smoke_kernel, tcg_choice, tmp_path):
    state = tmp_path / "state.bin"
    first = backends.create(tcg_choice, config(smoke_kernel, vmmod.new_run_dir(tmp_path / "a")))
    with first:
        first.wait_for_console_line(r"Kernel panic - not syncing", timeout=TCG_SLACK)
        qmp.save_state(first.run_dir / "qmp.sock", f"exec:cat > {shlex.quote(str(state))}", timeout=60)
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2])
    second = backends.create(tcg_choice, config(smoke_kernel, vmmod.new_run_dir(tmp_path / "b"),
                                                incoming=f"exec:cat {shlex.quote(str(state))}"))
    with second:
        with pytest.raises(qmp.QMPError) as caught:
            qmp.wait_loaded(second.run_dir / "qmp.sock", lambda: second.running, timeout=60)
    assert "\n" not in str(caught.value)
