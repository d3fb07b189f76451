"""The KVM probe's answer is remembered per host boot (a file in banger's state dir), so that
every `banger vm create` does not pay the probe's second; what changes the answer probes again."""
from __future__ import annotations

import json

import pytest

from banger.hypervisor import kvm


@pytest.fixture
def probes(tmp_path, monkeypatch):
    """kvm.probe replaced by a counter; banger's state dir in tmp_path; no per-process memo."""
    calls = []

    def fake(timeout: float = 1.0):
        calls.append(1)
        return kvm.KvmStatus(False, f"answer {len(calls)}")

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setattr(kvm, "probe", fake)
    monkeypatch.setattr(kvm, "_host_key", lambda: "boot-1 dev-1")
    kvm.cached_probe.cache_clear()
    yield calls
    kvm.cached_probe.cache_clear()


def ask() -> kvm.KvmStatus:
    kvm.cached_probe.cache_clear()  # as a new banger process would
    return kvm.cached_probe()


def test_a_second_process_reads_the_answer_the_first_probed(probes, tmp_path):
    assert ask().reason == "answer 1"
    assert ask().reason == "answer 1" and len(probes) == 1
    assert json.loads((tmp_path / "state/banger/kvm-probe.json").read_text())["key"] == "boot-1 dev-1"


def test_a_reboot_or_a_new_device_probes_again(probes, monkeypatch):
    ask()
    monkeypatch.setattr(kvm, "_host_key", lambda: "boot-2 dev-1")
    assert ask().reason == "answer 2" and len(probes) == 2


def test_a_negative_answer_expires(probes, monkeypatch):
    ask()
    monkeypatch.setattr(kvm.time, "time", lambda: 1e12)  # long after
    assert ask().reason == "answer 2"


def test_a_damaged_file_is_probed_over(probes, tmp_path):
    ask()
    (tmp_path / "state/banger/kvm-probe.json").write_text("{not json")
    assert ask().reason == "answer 2"


def test_the_real_host_key_names_the_boot_and_the_device():
    key = kvm._host_key()
    if key is None:
        pytest.skip("no /dev/kvm here")
    boot = open("/proc/sys/kernel/random/boot_id").read().strip()
    assert boot in key
