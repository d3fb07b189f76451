"""Fixtures for the fast VM-layer tests: a private banger environment (cache, state, config, ssh
config and HOME all under tmp_path), a named image whose artifacts are real (small) blobs, VM
records written the way banger writes them, and live processes standing in for a VMM."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from banger.core import procs
from banger.core import images
from banger.core.config import Dirs, default_dirs
from banger.core.store import Store
from banger.vm import records
from banger.vm.records import VMRecord

ROOTFS_SIZE = 4 * 2**20


@dataclass
class VMEnv:
    dirs: Dirs
    store: Store
    image: images.ImageRecord
    vars: dict  # the environment variables that point banger at this environment

    @property
    def state(self) -> Path:
        return self.dirs.state


def make_image(store: Store, name: str, rootfs_size: int = ROOTFS_SIZE) -> images.ImageRecord:
    """A named image with a raw rootfs (data at the start, a hole after) and a kernel and initrd."""
    raw = store.root / "staging" / f"{name}-rootfs"
    with open(raw, "wb") as f:
        f.write(b"banger-rootfs:" + name.encode() + os.urandom(64 * 1024))
        f.truncate(rootfs_size)
    artifacts = {"rootfs": store.ingest_file(raw),
                 "kernel": store.ingest_stream([b"kernel of " + name.encode()], algorithm="blake3"),
                 "initrd": store.ingest_stream([b"initrd of " + name.encode()], algorithm="blake3")}
    image = images.ImageRecord(name=name, ref=f"example.test/{name}:latest", digest="sha256:" + "1" * 64,
                               built_at=time.time(), artifacts=artifacts, steps=[], rootfs_size=rootfs_size)
    images.save(store, image)
    return image


@pytest.fixture
def vm_env(tmp_path, monkeypatch) -> VMEnv:
    values = {"BANGER_CACHE_DIR": str(tmp_path / "cache"), "XDG_STATE_HOME": str(tmp_path / "state"),
              "XDG_CONFIG_HOME": str(tmp_path / "config"), "BANGER_SSH_CONFIG": str(tmp_path / "ssh_config"),
              "BANGER_TREES_DIR": "cache", "HOME": str(tmp_path / "home")}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    dirs = default_dirs()
    store = Store(dirs.cache)
    return VMEnv(dirs=dirs, store=store, image=make_image(store, "tiny"), vars=values)


def write_record(env: VMEnv, name: str, **fields) -> VMRecord:
    """A VM record (and its directory, with an empty disk file) as `banger vm create` leaves them."""
    d = records.vm_dir(env.state, name)
    d.mkdir(parents=True, exist_ok=True)
    values = dict(name=name, id=records.new_id(), image=env.image.name, image_ref=env.image.ref,
                  artifacts=dict(env.image.artifacts), cache=str(env.store.root), backend="qemu", vcpus=1,
                  memory_mib=512, disk_size=ROOTFS_SIZE, disk="disk.qcow2", net="user", created=time.time())
    values.update(fields)
    record = VMRecord(**values)
    (d / record.disk).touch()
    records.save(env.state, record)
    return record


def as_running(record: VMRecord, pid: int, started: int | None = None) -> VMRecord:
    record.state, record.vmm_pid = "running", pid
    record.vmm_start = procs.start_time(pid) if started is None else started
    record.address, record.ssh_port = "127.0.0.1", 2222
    return record


@pytest.fixture
def sleeper():
    """Start `sleep` processes (stand-ins for a VMM); every one left is killed and reaped."""
    started: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(["sleep", "300"])
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
def lock_holder():
    """Hold a VM's lock from another process (flock is per open file: a thread would not do)."""
    procs: list[subprocess.Popen] = []
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()")

    def hold(state: Path, name: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", code, str(records.vm_dir(state, name) / "lock")],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield hold
    for proc in procs:
        proc.stdin.close()
        proc.wait(10)
