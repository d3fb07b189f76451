"""The boot step: its record key, its probe parsing, and a real failing boot that must not be
cached and must show the console. (The passing boot + SSH probe is the end-to-end test.)"""
from __future__ import annotations

import shutil
from pathlib import Path


from banger.steps import boot
from banger.engine import tasks as engine
from banger.core.config import Dirs
from banger.engine.spec import BuildSpec
from banger.core.store import ActionRecord, Store
from tests.conftest import need
from tests.smoke_kernel import smoke_kernel  # noqa: F401 (a fixture)


def test_timeouts_do_not_key_the_record(tmp_path):
    spec = BuildSpec(image="x", hypervisor="qemu")
    fast = boot.BootConfig.from_settings(spec, {"boot": {"timeout": 30, "memory_mib": 2048}})
    slow = boot.BootConfig.from_settings(spec, {"boot": {"timeout": 900, "memory_mib": 2048}})
    assert fast.timeout == 30 and slow.timeout == 900
    assert fast.key_params() == slow.key_params() == {"hypervisor": "qemu", "memory_mib": 2048, "vcpus": 1,
                                                      "cmdline": ""}
    assert boot.BootConfig.from_settings(BuildSpec(image="x"), {}).key_params()["hypervisor"] == "auto"


SYSTEMCTL_SHOW = """Id=banger-network.service
LoadState=loaded
ActiveState=active
SubState=exited
Result=success

Id=banger-sshd-keys.service
LoadState=loaded
ActiveState=inactive
SubState=dead
Result=success

Id=banger-first-boot.service
LoadState=loaded
ActiveState=failed
SubState=failed
Result=exit-code

Id=banger-agent.service
LoadState=not-found
ActiveState=inactive
SubState=dead
Result=success
"""


def test_probe_parsing_and_verdict():
    units = boot.parse_systemctl_show(SYSTEMCTL_SHOW, boot.units())
    assert units["banger-network.service"] == {"load": "loaded", "active": "active", "sub": "exited",
                                               "result": "success"}
    probe = {"uid": 0, "os_release": boot.parse_os_release('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n'),
             "units": units}
    assert probe["os_release"] == {"PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)", "ID": "debian"}
    assert boot.probe_problems(probe) == [
        "banger-first-boot.service failed (exit-code); see `journalctl -u banger-first-boot.service`",
        "banger-agent.service is not-found"]
    del units["banger-first-boot.service"], units["banger-agent.service"]
    assert boot.probe_problems(probe) == []
    assert boot.probe_problems({**probe, "uid": 1000}) == ["`id -u` gave 1000, expected 0"]


def test_failed_boot_is_not_cached_and_shows_the_console(smoke_kernel, tmp_path):
    """A disk that is not ext4: the kernel cannot mount root and panics; the step fails with the
    console's last lines and the log path, and leaves no record behind."""
    need("qemu-system-x86_64")
    dirs = Dirs(cache=tmp_path / "cache", state=tmp_path / "state", config=tmp_path / "config")
    store = Store(dirs.cache)
    build = engine.Build(store, log=lambda msg: None)
    build.context["dirs"] = dirs
    outputs = {}
    for name, make in (("kernel", lambda p: shutil.copyfile(smoke_kernel, p)),
                       ("rootfs", lambda p: p.write_bytes(b"\0" * (4 << 20)))):
        path = store.root / "staging" / name
        make(path)
        outputs[name] = store.ingest_file(path)
    build.records["stage-kernel"] = ActionRecord(key="k", step="stage-kernel", step_version="1", inputs={},
                                                 params={}, tools={}, outputs=outputs)
    (task,) = list(boot.tasks(build, BuildSpec(image="x", hypervisor="qemu")))
    assert task["task_dep"] == ["stage-kernel"]
    failed = task["actions"][0]()
    assert failed is not None, "the boot step should fail"
    message = build.error
    assert message.startswith("the VM (qemu/")
    assert "exited with code 0 before its console printed BANGER_READY (the guest agent's readiness line)" in message
    assert "Kernel panic - not syncing" in message
    log_line = message.splitlines()[-1]
    assert log_line.startswith(f"full console log: {dirs.state / 'boot-runs'}/") and log_line.endswith("/console.log")
    assert Path(log_line.split(": ", 1)[1]).exists()
    assert not any(record.step == "boot" for record, _ in store.records())
    assert list((store.root / "staging").iterdir()) == []
    assert all(store.verify(d, full=True) for d in outputs.values()), "the boot must not modify the cached rootfs"


class _LocalShell:
    """Runs the probe script with this host's /bin/sh, shaped like paramiko's exec_command."""

    def exec_command(self, command, timeout=None):
        import io
        import subprocess

        proc = subprocess.run(["sh", "-c", command], capture_output=True, timeout=timeout)

        class Out(io.BytesIO):
            class channel:
                @staticmethod
                def recv_exit_status():
                    return proc.returncode

        return None, Out(proc.stdout), io.BytesIO(proc.stderr)


def test_probe_script_runs_under_sh_and_parses():
    import os

    probe = boot.run_probe(_LocalShell(), boot.units())
    assert probe["uid"] == os.geteuid()
    host_release = boot.parse_os_release(Path("/etc/os-release").read_text())
    assert probe["os_release"] == host_release and host_release.get("ID")
    if Path("/run/systemd/system").is_dir():
        assert probe["init"] == "systemd" and set(probe["units"]) == set(boot.units())
        assert probe["system_state"] and isinstance(probe["failed_units"], list)
    else:
        assert probe["init"] == "other" and probe["units"] == {} and probe["system_state"] is None
        assert probe["failed_units"] == []
