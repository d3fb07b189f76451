"""QMP through the maintained qemu.qmp library, against a real QEMU (no guest: `-M none`), with a
socket path too long for a unix socket address (reached through /proc/self/fd)."""
from __future__ import annotations

import subprocess
import time

from banger.core import procs
from banger.vm import control
from banger.vm.records import VMRecord
from tests.support_tools import need


def test_qmp_query_and_quit_through_a_deep_socket_path(tmp_path):
    need("qemu-system-x86_64")
    deep = tmp_path.joinpath(*["d" * 30] * 4)  # > 108 bytes of socket path
    deep.mkdir(parents=True)
    sock = deep / "qmp.sock"
    assert len(str(sock)) > 108
    vmm = subprocess.Popen(["qemu-system-x86_64", "-M", "none", "-display", "none", "-nodefaults",
                            "-qmp", "unix:qmp.sock,server=on,wait=off"], cwd=deep,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert time.monotonic() < deadline and vmm.poll() is None, "QEMU did not open its QMP socket"
            time.sleep(0.05)
        assert control.qmp(sock, "query-status")["status"] in ("running", "prelaunch")
        record = VMRecord(name="q", id="0" * 31 + "1", image="", image_ref="", artifacts={}, cache=str(tmp_path),
                          backend="qemu", vcpus=1, memory_mib=128, disk_size=0, disk="disk.qcow2", net="user",
                          created=0, vmm_pid=vmm.pid, vmm_start=procs.start_time(vmm.pid))
        control.kill(deep, record)  # QMP quit first
        assert vmm.wait(10) == 0  # quit by QMP: a clean exit, not a signal
    finally:
        if vmm.poll() is None:
            vmm.kill()


def test_qmp_on_a_missing_socket_is_none(tmp_path):
    assert control.qmp(tmp_path / "qmp.sock", "query-status") is None
