"""The KVM probe and the backend choice, on this host's real /dev/kvm and PATH."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from banger.hypervisor import choice as hypervisor, kvm
from banger.hypervisor.choice import HypervisorError
from banger.hypervisor.kvm import KvmStatus

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_probe_answers_within_seconds_with_a_one_line_reason():
    start = time.monotonic()
    status = kvm.probe()
    elapsed = time.monotonic() - start
    assert elapsed < 5.0, f"the probe took {elapsed:.1f}s"
    assert status.reason and "\n" not in status.reason
    if not status.usable:
        assert "kvm" in status.reason.lower()


def _kvm_opens() -> bool:
    return os.path.exists(kvm.DEVICE) and os.access(kvm.DEVICE, os.R_OK | os.W_OK)


def test_test_guest_reaches_its_io_and_hlt():
    """A tiny loop finishes even where every instruction is emulated: the guest code is right."""
    if not _kvm_opens():
        pytest.skip(f"no usable {kvm.DEVICE} on this host")
    status = kvm._run_test_guest(budget=10.0, loops=1000)
    assert status.usable, status.reason
    assert "3,000 instructions" in status.reason


def test_probe_says_not_usable_where_vcpus_are_emulated():
    """Independent measure: time a small loop; far slower than hardware means the probe must refuse."""
    if not _kvm_opens():
        assert not kvm.probe().usable
        return
    loops = 20_000
    start = time.monotonic()
    small = kvm._run_test_guest(budget=20.0, loops=loops)
    per_instruction = (time.monotonic() - start) / (3 * loops)
    status = kvm.probe()
    if small.usable and per_instruction > 100e-9:  # hardware does ~1 ns; this host emulates
        assert not status.usable
        assert "did not finish a test loop" in status.reason
    elif small.usable and per_instruction < 10e-9:
        assert status.usable, status.reason


def test_probe_child_failure_is_reported_not_raised(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/bin/false")
    if not _kvm_opens():
        pytest.skip(f"no usable {kvm.DEVICE} on this host")
    status = kvm.probe()
    assert not status.usable and "probe died" in status.reason


def test_auto_picks_what_runs_here_and_says_why():
    if hypervisor.shutil.which(hypervisor.QEMU) is None:
        pytest.skip("missing host tools: qemu-system-x86_64")
    choice = hypervisor.choose("auto")
    status = kvm.cached_probe()
    if not status.usable:
        assert (choice.backend, choice.accel, choice.machine) == ("qemu", "tcg", "pc")
        assert status.reason in choice.reason and "TCG" in choice.reason
    else:
        assert choice.accel == "kvm" and choice.machine == "microvm"
    assert os.path.isabs(choice.binary)


def test_firecracker_asked_for_here_names_what_is_missing():
    status = kvm.cached_probe()
    has_firecracker = hypervisor.shutil.which("firecracker") is not None
    if status.usable and has_firecracker and hypervisor.tap_problem() is None:
        pytest.skip("Firecracker can run on this host")
    with pytest.raises(HypervisorError) as err:
        hypervisor.choose("firecracker")
    message = str(err.value)
    assert "\n" not in message and message.startswith("hypervisor=firecracker cannot run here")
    if not has_firecracker:
        assert "`firecracker` is not on PATH" in message
    if not status.usable:
        assert status.reason in message
    assert "hypervisor=qemu" in message


WORKS = KvmStatus(True, "test: kvm works")
BROKEN = KvmStatus(False, "test: vcpus do not run")


def _which(*present: str):
    return lambda name: f"/opt/bin/{name}" if name in present else None


@pytest.mark.parametrize("requested, status, tools, expected", [
    ("auto", WORKS, ("qemu-system-x86_64", "firecracker"), ("firecracker", "kvm", "microvm")),
    ("auto", WORKS, ("qemu-system-x86_64",), ("qemu", "kvm", "microvm")),
    ("auto", BROKEN, ("qemu-system-x86_64", "firecracker"), ("qemu", "tcg", "pc")),
    ("qemu", WORKS, ("qemu-system-x86_64", "firecracker"), ("qemu", "kvm", "microvm")),
    ("qemu", BROKEN, ("qemu-system-x86_64",), ("qemu", "tcg", "pc")),
])
def test_choice_table(requested, status, tools, expected):
    if expected[0] == "firecracker" and hypervisor.tap_problem():
        pytest.skip(f"tap networking unavailable here: {hypervisor.tap_problem()}")
    choice = hypervisor.choose(requested, kvm_status=lambda: status, which=_which(*tools))
    assert (choice.backend, choice.accel, choice.machine) == expected
    assert choice.binary == f"/opt/bin/{'firecracker' if expected[0] == 'firecracker' else 'qemu-system-x86_64'}"


def test_no_qemu_is_one_clear_line():
    with pytest.raises(HypervisorError, match=r"`qemu-system-x86_64` is not on PATH \(install the qemu-system-x86"):
        hypervisor.choose("auto", kvm_status=lambda: BROKEN, which=_which())


def test_unknown_backend():
    with pytest.raises(HypervisorError, match="use one of: auto, qemu, firecracker"):
        hypervisor.choose("vmware")


def test_firecracker_without_root_says_tap_needs_root(tmp_path):
    """Run as `nobody` for real: the tap check must name root as what is missing."""
    if os.geteuid() != 0 or hypervisor.shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop to nobody")
    code = ("from banger.hypervisor import choice as hypervisor, kvm\n"
            "ok = lambda: kvm.KvmStatus(True, 'test')\n"
            "try:\n"
            "    hypervisor.choose('firecracker', kvm_status=ok, which=lambda n: '/opt/bin/' + n)\n"
            "except hypervisor.HypervisorError as e:\n"
            "    print(e)\n")
    out = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                          sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 0, out.stderr
    assert "tap networking needs root" in out.stdout
    assert out.stdout.count("\n") == 1


def _no_probe():
    raise AssertionError("check() probed /dev/kvm where the answer cannot depend on it")


@pytest.mark.parametrize("requested", ["auto", "qemu"])
def test_check_with_qemu_on_path_passes_without_probing(requested):
    hypervisor.check(requested, kvm_status=_no_probe, which=_which("qemu-system-x86_64"))


@pytest.mark.parametrize("requested, status, tools, message", [
    ("firecracker", BROKEN, ("qemu-system-x86_64",), "hypervisor=firecracker cannot run here: test: vcpus do not run; "
                                                     "`firecracker` is not on PATH"),
    ("qemu", WORKS, ("firecracker",), "no usable hypervisor: `qemu-system-x86_64` is not on PATH"),
    ("auto", BROKEN, (), "no usable hypervisor: `qemu-system-x86_64` is not on PATH"),
    ("vmware", WORKS, ("qemu-system-x86_64",), "hypervisor='vmware'; use one of"),
])
def test_check_refuses_what_choose_would_refuse(requested, status, tools, message):
    with pytest.raises(HypervisorError) as err:
        hypervisor.check(requested, kvm_status=lambda: status, which=_which(*tools))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
