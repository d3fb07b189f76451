"""VM.wait_for_console_line over a console log written by hand (no VMM runs: every awaited line is
already there)."""
from __future__ import annotations

from pathlib import Path

from banger.hypervisor import backends, choice as hypervisor, kvm
from banger.hypervisor.vm import VMConfig


def vm(tmp_path: Path):
    choice = hypervisor.choose("qemu", kvm_status=lambda: kvm.KvmStatus(False, "test: TCG"))
    return backends.create(choice, VMConfig(kernel=tmp_path / "kernel", run_dir=tmp_path))


def test_lines_after_a_match_are_left_for_the_next_wait(tmp_path):
    """A restore waits for the key line, then for the readiness line: both can come in one read."""
    v = vm(tmp_path)
    v.console_log.write_text("booting\nBANGER_HOSTKEY b1 ssh-ed25519 AAAA\nnoise\nBANGER_READY b1\n")
    assert v.wait_for_console_line(r"^BANGER_HOSTKEY", timeout=5) == "BANGER_HOSTKEY b1 ssh-ed25519 AAAA"
    seen: list[str] = []
    assert v.wait_for_console_line(r"^BANGER_READY", timeout=5, seen=seen) == "BANGER_READY b1"
    assert seen == ["noise"]
