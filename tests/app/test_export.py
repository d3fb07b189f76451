"""`banger image export`: a real boot=no build's boot files copied out of the cache, sparse (or
reflinked), so that writing to them leaves the cache's blobs intact; the cmdline is QemuVM's."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from banger.app import export
from banger.core import config, digest as dg, fsutil, images
from banger.core.store import Store
from banger.hypervisor.choice import Choice
from banger.hypervisor.kvm import KvmStatus
from banger.hypervisor.qemu import TCG_PC_CMDLINE, QemuVM
from banger.hypervisor.vm import VMConfig
from banger.kernel import sources
from banger.steps.boot import BootConfig, guest_cmdline
from tests.support_kernel import make_kernel_tree
from tests.support_registry import make_image
from tests.support_tools import REPO, need

NO_KVM = lambda: KvmStatus(False, "test: no KVM")  # noqa: E731  (the probe, stubbed)
KVM = Choice(backend="qemu", accel="kvm", machine="microvm", reason="test", binary="qemu-system-x86_64")
TCG_PC = Choice(backend="qemu", accel="tcg", machine="pc", reason="test", binary="qemu-system-x86_64")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[config.Dirs, images.ImageRecord]:
    """A real boot=no build (fake kernel bundle) of a small OCI image into a 64 MiB rootfs."""
    need("mkfs.ext4", "debugfs", "depmod")
    tmp = tmp_path_factory.mktemp("export")
    layout = tmp / "layout"
    make_image(layout, "v1", {"etc/os-release": b"ID=small\n", "etc/inittab": b"::sysinit:/etc/init.d/rcS\n",
                              "bin/hello": b"#!/bin/sh\necho hi\n"})
    dirs = config.Dirs(cache=tmp / "cache", state=tmp / "state" / "banger", config=tmp / "config" / "banger")
    sources.import_dir(dirs, "k", make_kernel_tree(tmp / "kernel-src", "6.1.0-99-amd64"))
    env = {**os.environ, "BANGER_CACHE_DIR": str(dirs.cache), "XDG_STATE_HOME": str(tmp / "state"),
           "XDG_CONFIG_HOME": str(tmp / "config"), "BANGER_TREES_DIR": "cache"}
    proc = subprocess.run([sys.executable, "-m", "banger", "build", f"image=oci-layout:{layout}:v1", "name=small",
                           "kernel=k", "size=64M", "boot=no"], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return dirs, images.load(Store(dirs.cache), "small")


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def test_the_boot_files_are_copies_of_the_staged_artifacts(built, tmp_path):
    dirs, record = built
    store = Store(dirs.cache)
    staged = store.get_record(next(s["key"] for s in record.steps if s["step"] == "stage-kernel")).outputs
    assert record.artifacts["rootfs"] == staged["rootfs"]  # the rootfs with the kernel's modules
    written = export.export_files(store, "small", tmp_path / "out" / "deeper", kvm_status=NO_KVM)
    expected = [export.ARTIFACT_FILES[a] for a in export.ARTIFACT_FILES if a in staged] + ["cmdline", "run-qemu.sh"]
    assert list(written) == expected and {"rootfs.ext4", "bzImage"} <= set(written)
    assert sorted(p.name for p in (tmp_path / "out" / "deeper").iterdir()) == sorted(expected)  # no temp left
    for artifact, file_name in export.ARTIFACT_FILES.items():
        if artifact in staged:
            assert dg.of_file(written[file_name], dg.split(staged[artifact])[0])[0] == staged[artifact]
    assert os.access(written["run-qemu.sh"], os.X_OK) and not os.access(written["cmdline"], os.X_OK)
    assert subprocess.run(["sh", "-n", str(written["run-qemu.sh"])]).returncode == 0
    script = written["run-qemu.sh"].read_text()
    assert "-kernel \"$kernel\"" in script and "hostfwd=tcp:127.0.0.1:$port-:22" in script
    assert ("-initrd initrd.img" in script) == ("initrd" in staged)


def test_the_rootfs_copy_is_sparse(built, tmp_path):
    dirs, record = built
    store = Store(dirs.cache)
    blob = store.path(record.artifacts["rootfs"])
    assert blob.stat().st_size >= 64 << 20 and allocated(blob) < blob.stat().st_size // 4  # a sparse source
    rootfs = export.export_files(store, "small", tmp_path, kvm_status=NO_KVM)["rootfs.ext4"]
    assert rootfs.stat().st_size == blob.stat().st_size
    assert allocated(rootfs) < rootfs.stat().st_size // 4
    assert allocated(rootfs) <= allocated(blob) + (1 << 20)


def test_writing_into_the_export_leaves_the_cache_blobs_intact(built, tmp_path):
    dirs, record = built
    written = export.export_files(Store(dirs.cache), "small", tmp_path, kvm_status=NO_KVM)
    for file_name in ("rootfs.ext4", "bzImage"):
        with open(written[file_name], "r+b") as f:
            f.write(b"\xff" * 4096)
            f.seek(written[file_name].stat().st_size // 2)
            f.write(b"guest wrote this")
    fresh = Store(dirs.cache)  # nothing trusted from this process: stamps and, with full=True, a rehash
    for artifact in ("rootfs", "kernel"):
        digest = record.artifacts[artifact]
        assert fresh.verify(digest, full=True), artifact
        assert dg.of_file(fresh.path(digest), dg.split(digest)[0])[0] == digest


def test_the_cmdline_is_the_one_qemu_boots_the_image_with(built, tmp_path):
    dirs, record = built
    store = Store(dirs.cache)
    written = export.export_files(store, "small", tmp_path, kvm_status=NO_KVM)
    cmdline = written["cmdline"].read_text().strip()

    def qemu_cmdline(choice: Choice, user: str = "") -> str:
        cfg = VMConfig(kernel=written["bzImage"], run_dir=tmp_path, rootfs=written["rootfs.ext4"],
                       cmdline=guest_cmdline(user))  # what the boot step hands the VM
        return QemuVM(choice, cfg).cmdline()

    assert cmdline == qemu_cmdline(KVM)
    assert cmdline.startswith("console=ttyS0 root=/dev/vda rw banger.ip=") and "panic=-1" in cmdline
    # under TCG on -M pc QemuVM adds TCG_PC_CMDLINE: run-qemu.sh appends it in that case
    assert sorted(qemu_cmdline(TCG_PC).split()) == sorted(cmdline.split() + TCG_PC_CMDLINE.split())
    assert f'append="$append {TCG_PC_CMDLINE}"' in written["run-qemu.sh"].read_text()
    # the user's boot settings (config.json) count, as in a build's boot step
    dirs.config.mkdir(parents=True, exist_ok=True)
    dirs.config_file.write_text(json.dumps({"boot": {"cmdline": "loglevel=7", "memory_mib": 2048}}))
    try:
        boot = export.boot_settings(dirs)
    finally:
        dirs.config_file.unlink()
    assert boot == BootConfig(cmdline="loglevel=7", memory_mib=2048)
    again = export.export_files(store, "small", tmp_path, force=True, boot=boot, kvm_status=NO_KVM)
    assert again["cmdline"].read_text().strip() == qemu_cmdline(KVM, "loglevel=7")
    assert "-m 2048 " in again["run-qemu.sh"].read_text()


def test_files_already_there_are_refused_unless_forced(built, tmp_path):
    dirs, record = built
    store = Store(dirs.cache)
    (tmp_path / "cmdline").write_text("mine\n")
    with pytest.raises(export.ExportError) as exc:
        export.export_files(store, "small", tmp_path, kvm_status=NO_KVM)
    message = str(exc.value)
    assert "\n" not in message and "cmdline" in message and "--force" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmdline"]  # nothing written
    # --force replaces, and a symlink into the cache is replaced, never written through
    blob = store.path(record.artifacts["rootfs"])
    (tmp_path / "rootfs.ext4").symlink_to(blob)
    written = export.export_files(store, "small", tmp_path, force=True, kvm_status=NO_KVM)
    assert not written["rootfs.ext4"].is_symlink() and written["cmdline"].read_text() != "mine\n"
    assert Store(dirs.cache).verify(record.artifacts["rootfs"], full=True)


def test_an_unknown_image_is_the_usual_one_line_error(built, tmp_path):
    dirs, _ = built
    with pytest.raises(images.ImageError, match="no image named 'nope'; `banger image list`"):
        export.export_files(Store(dirs.cache), "nope", tmp_path / "out", kvm_status=NO_KVM)
    assert not (tmp_path / "out").exists()


def test_artifacts_gone_from_the_cache_say_how_to_rebuild(tmp_path):
    store = Store(tmp_path / "cache")
    rootfs = store.ingest_stream([b"\0" * 8192], algorithm="blake3")
    kernel = store.ingest_stream([b"kernel"], algorithm="blake3")
    images.save(store, images.ImageRecord(name="gone", ref="example/gone:1", digest="sha256:" + "0" * 64,
                                          built_at=0.0, artifacts={"rootfs": rootfs, "kernel": kernel}, steps=[]))
    store.remove(kernel)
    with pytest.raises(export.ExportError) as exc:
        export.export_files(store, "gone", tmp_path / "out", kvm_status=NO_KVM)
    assert str(exc.value) == ("image 'gone''s kernel is no longer in the cache (removed by `banger cache gc`?); "
                              "rebuild it with `banger build image=example/gone:1 name=gone`")
    assert not (tmp_path / "out").exists()


def test_the_script_boots_with_what_the_kvm_probe_found(built, tmp_path):
    dirs, _ = built
    store = Store(dirs.cache)
    script = export.export_files(store, "small", tmp_path / "a", kvm_status=NO_KVM)["run-qemu.sh"].read_text()
    assert 'accel="${ACCEL:-tcg}"' in script and "# test: no KVM" in script
    script = export.export_files(store, "small", tmp_path / "b",
                                 kvm_status=lambda: KvmStatus(True, "test: KVM"))["run-qemu.sh"].read_text()
    assert 'accel="${ACCEL:-kvm}"' in script


def test_the_sparse_copy_falls_back_to_reads_and_writes_where_copy_file_range_is_refused(tmp_path, monkeypatch):
    src = tmp_path / "disk"
    with open(src, "wb") as f:
        f.truncate(32 << 20)
        f.seek(16 << 20)
        f.write(b"data in the middle")
    monkeypatch.setattr(fsutil.fcntl, "ioctl", lambda *a: (_ for _ in ()).throw(OSError(errno.EOPNOTSUPP, "no reflink")))
    monkeypatch.setattr(fsutil.os, "copy_file_range",
                        lambda *a: (_ for _ in ()).throw(OSError(errno.EXDEV, "cross-device")))
    assert fsutil.copy_sparse(src, tmp_path / "copy") == "sparse"
    assert (tmp_path / "copy").read_bytes() == src.read_bytes()
    assert allocated(tmp_path / "copy") < 1 << 20
