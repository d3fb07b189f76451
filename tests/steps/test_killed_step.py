"""A build SIGKILLed in the middle of a step: the helper the step started dies with it, and the
next banger command removes the step's staging (the killed process's, only)."""
from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys

from banger.core import config, procs
from banger.kernel import sources
from tests.core.test_staging import wait_gone
from tests.support_kernel import make_kernel_tree
from tests.support_registry import make_image
from tests.support_tools import REPO, need

SHIM = """#!/bin/sh
# mke2fs that hangs (after saying its pid): the long-lived helper of a step
case "$1" in -V) exec {real} "$@";; esac
echo $$ > {fifo}
exec sleep 600
"""


def test_a_killed_build_leaves_no_helper_and_its_staging_goes_at_the_next_command(tmp_path):
    need("mke2fs", "mkfs.ext4", "debugfs")
    layout = tmp_path / "layout"
    make_image(layout, "v1", {"etc/os-release": b"ID=killed\n", "big": bytes(range(256)) * 4000})
    dirs = config.Dirs(cache=tmp_path / "cache", state=tmp_path / "state" / "banger",
                       config=tmp_path / "config" / "banger")
    sources.import_dir(dirs, "k", make_kernel_tree(tmp_path / "kernel-src", "6.1.0-99-amd64"))
    shims = tmp_path / "bin"
    shims.mkdir()
    fifo = tmp_path / "helper-pid"
    os.mkfifo(fifo)
    (shims / "mke2fs").write_text(SHIM.format(real=shutil.which("mke2fs"), fifo=fifo))
    (shims / "mke2fs").chmod(0o755)
    env = {**os.environ, "BANGER_CACHE_DIR": str(dirs.cache), "XDG_STATE_HOME": str(tmp_path / "state"),
           "XDG_CONFIG_HOME": str(tmp_path / "config"), "BANGER_TREES_DIR": "cache",
           "PATH": f"{shims}:{os.environ['PATH']}"}

    build = subprocess.Popen([sys.executable, "-m", "banger", "build", f"image=oci-layout:{layout}:v1",
                              "kernel=k", "boot=no"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    helper = None
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    build_fd = os.pidfd_open(build.pid)
    try:
        poller = select.poll()
        poller.register(reader, select.POLLIN)
        poller.register(build_fd, select.POLLIN)
        ready = dict(poller.poll(300_000))  # the helper said its pid, or the build ended first
        assert reader in ready, f"the build never reached mke2fs: {build.stderr.read()[-2000:] if build.poll() is not None else 'still running'}"
        helper = int(os.read(reader, 64))
        started = procs.start_time(helper)
        assert started is not None
        killed_staging = [p for p in (dirs.cache / "staging").iterdir() if f"@{build.pid}-" in p.name]
        assert any(p.name.startswith("ext4-") for p in killed_staging), killed_staging

        build.send_signal(signal.SIGKILL)
        build.wait()
        assert wait_gone(helper, started), "mke2fs outlived the build that started it"

        out = subprocess.run([sys.executable, "-m", "banger", "cache", "du"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert not any(p.exists() for p in killed_staging)
    finally:
        os.close(reader)
        os.close(build_fd)
        build.kill()
        build.wait()
        if helper is not None:
            procs.signal_process(helper, procs.start_time(helper), signal.SIGKILL)
