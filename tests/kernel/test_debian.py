"""The real Debian cloud kernel: vmlinux, module order, the generated initramfs booting under QEMU
(TCG), and the stage-kernel step injecting the modules into a rootfs."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from banger.core import config
from banger.rootfs import debugfs
from banger.kernel import apt, initrd, kmod, vmlinux
from banger.steps import stage_kernel
from banger.core.digest import of_file
from banger.engine.tasks import Build
from banger.kernel.bundle import Bundle
from banger.engine.spec import BuildSpec
from banger.core.store import ActionRecord, Store
from tests.conftest import need
from tests.support_kernel import FLAVOUR, boot_qemu, deb_release, make_disk

MARKER = "BANGER-TEST-MARKER-7f3a"


def test_apt_resolves_the_versioned_cloud_package():
    need("apt-cache")
    package = apt.resolve_image_package(FLAVOUR)
    assert re.fullmatch(r"linux-image-\d+\.\d+\.\d+-\d+-cloud-amd64", package), package
    assert apt.package_info(package)["Package"] == package


def test_vmlinux_is_the_elf_of_the_packaged_kernel(debian_bundle, debian_kernel_deb):
    release = deb_release(debian_kernel_deb)
    assert debian_bundle.version == release
    elf = debian_bundle.path / "vmlinux"
    assert elf.read_bytes()[:4] == b"\x7fELF" and vmlinux.elf_machine(elf) == 62
    banner = vmlinux.linux_banner(elf)
    assert banner is not None and banner.startswith(f"Linux version {release} "), banner
    assert vmlinux.kernel_release(debian_bundle.path / "vmlinuz") == release
    assert debian_bundle.manifest.info["package"] == f"linux-image-{release}"


def test_module_order_respects_depends(debian_bundle):
    index = kmod.ModuleIndex(debian_bundle.modules_root)
    order = [m.name for m in index.load_order(kmod.WANTED_FOR_BOOT, kmod.REQUIRED_FOR_BOOT)]
    for wanted in ("virtio_pci", "virtio_mmio", "virtio_blk", "virtio_net", "vmw_vsock_virtio_transport"):
        assert wanted in order or wanted in index.builtin
    assert "ext4" in order or "ext4" in index.builtin
    for pos, name in enumerate(order):
        for dep in index.depends(name):
            assert dep in index.builtin or order.index(dep) < pos, f"{name} loads before its dependency {dep}"
    if shutil.which("modinfo"):  # our .modinfo parsing agrees with kmod's
        for name in order:
            out = subprocess.run(["modinfo", "-F", "depends", str(index.files[name].path)],
                                 capture_output=True, text=True, check=True).stdout.strip()
            assert sorted(filter(None, out.split(","))) == sorted(index.depends(name)), name


def test_initramfs_holds_busybox_init_and_the_modules_in_order(debian_bundle):
    need("cpio")
    entries = set(initrd.list_entries(debian_bundle.path / "initrd.img"))
    assert {"init", "bin/busybox", "bin/sh", "bin/switch_root", "dev/console", "etc/banger/modules"} <= entries
    loaded = debian_bundle.manifest.info["initrd"]["modules"]
    assert loaded[-1] == "vmw_vsock_virtio_transport" and "virtio_blk" in loaded
    for name in loaded:
        assert any(e.startswith(f"lib/modules/{debian_bundle.version}/") and e.endswith(f"/{name}.ko") for e in entries)


@pytest.mark.slow
def test_initramfs_boots_the_disk_to_its_init(debian_bundle, busybox_static, tmp_path):
    disk = make_disk(tmp_path / "disk.ext4", busybox_static, f"echo {MARKER}\n/bin/busybox poweroff -f\n")
    boot = boot_qemu(debian_bundle.path / "vmlinuz", debian_bundle.path / "initrd.img", disk, MARKER)
    print(f"\nmarker after {boot.marker_at} s, QEMU exited after {boot.seconds:.1f} s")
    assert boot.marker_at is not None and boot.marker_at < 60, boot.output[-3000:]
    assert "banger-initramfs: could not load" not in boot.output
    assert "Kernel panic" not in boot.output


@pytest.mark.slow
def test_unmountable_root_gives_a_clear_message_and_powers_off(debian_bundle, tmp_path):
    disk = tmp_path / "zeros.img"
    disk.write_bytes(b"\0" * (4 << 20))
    boot = boot_qemu(debian_bundle.path / "vmlinuz", debian_bundle.path / "initrd.img", disk, "powering off")
    assert "banger-initramfs: cannot mount root filesystem /dev/vda" in boot.output, boot.output[-3000:]
    assert boot.marker_at is not None and boot.returncode == 0
    assert "reboot: Power down" in boot.output and "Kernel panic" not in boot.output


# ---- stage-kernel ------------------------------------------------------------------------------
def dirs_of(bundle: Bundle, tmp: Path) -> config.Dirs:
    return config.Dirs(cache=tmp / "cache", state=bundle.path.parent.parent, config=tmp / "config")


def run_stage(store: Store, image_digest: str, bundle: Bundle, dirs: config.Dirs) -> tuple[Build, str]:
    build = Build(store, log=lambda m: None)
    build.context["dirs"] = dirs
    build.records["inject"] = ActionRecord(key="k", step="inject", step_version="0", inputs={}, params={},
                                           tools={}, outputs={"image": image_digest})
    list(stage_kernel.tasks(build, BuildSpec(image="x", kernel=bundle.name)))
    step = build.steps["stage-kernel"]
    if build.is_cached(step):
        return build, "cached"
    build.execute(step)
    return build, "ran"


def ingest_copy(store: Store, image: Path) -> str:
    copy = store.root / "staging" / "input.img"
    shutil.copyfile(image, copy)
    return store.ingest_file(copy)


@pytest.fixture
def staged(debian_bundle, busybox_static, tmp_path):
    """A merged-/usr, too-small image staged with the Debian kernel (modules injected, fs grown)."""
    need("debugfs", "resize2fs", "e2fsck")
    init = (f"/bin/busybox mount -t proc proc /proc\n"
            f"/bin/busybox modprobe loop && /bin/busybox grep -q '^loop ' /proc/modules && echo {MARKER}\n"
            "/bin/busybox poweroff -f\n")
    image = make_disk(tmp_path / "root.ext4", busybox_static, init, size="24M", merged_usr=True)
    store = Store(tmp_path / "store")
    digest = ingest_copy(store, image)
    build, status = run_stage(store, digest, debian_bundle, dirs_of(debian_bundle, tmp_path))
    return store, digest, build, status


def test_stage_kernel_injects_modules_and_is_cached(staged, debian_bundle, tmp_path):
    store, digest, build, status = staged
    record = build.records["stage-kernel"]
    assert status == "ran" and set(record.outputs) == {"rootfs", "kernel", "vmlinux", "initrd"}
    assert of_file(store.path(record.outputs["kernel"]), "blake3")[0] == of_file(debian_bundle.path / "vmlinuz", "blake3")[0]
    assert store.path(record.outputs["initrd"]).read_bytes() == (debian_bundle.path / "initrd.img").read_bytes()
    assert record.info["injected_module_files"] > 1000 and record.info["grown_by"] > 0
    assert store.verify(digest, full=True)  # the input image is untouched
    rootfs = store.path(record.outputs["rootfs"])
    version = debian_bundle.version
    probe = debugfs.run(rootfs, [f"stat /usr/lib/modules/{version}/modules.dep",
                                 f"stat /usr/lib/modules/{version}/kernel/drivers/block/loop.ko",
                                 f"stat /usr/lib/modules/{version}/kernel"])
    for block in probe:
        text = "\n".join(block.output)
        assert "User:     0   Group:     0" in text, text
    assert "Mode:  0644" in "\n".join(probe[0].output) and "Mode:  0755" in "\n".join(probe[2].output)
    fsck = subprocess.run(["e2fsck", "-fn", str(rootfs)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    _, again = run_stage(store, digest, debian_bundle, dirs_of(debian_bundle, tmp_path))
    assert again == "cached"


@pytest.mark.slow
def test_staged_rootfs_boots_and_loads_an_injected_module(staged):
    store, _, build, _ = staged
    out = build.records["stage-kernel"].outputs
    disk = store.root / "staging" / "boot.img"
    shutil.copyfile(store.path(out["rootfs"]), disk)
    boot = boot_qemu(store.path(out["kernel"]), store.path(out["initrd"]), disk, MARKER)
    assert boot.marker_at is not None, boot.output[-3000:]


def test_stage_kernel_leaves_an_image_that_has_the_modules(debian_bundle, busybox_static, tmp_path):
    need("debugfs")
    version = debian_bundle.version
    image = make_disk(tmp_path / "has.ext4", busybox_static, "true\n", extra_dirs=(f"lib/modules/{version}",))
    store = Store(tmp_path / "store")
    digest = ingest_copy(store, image)
    build, status = run_stage(store, digest, debian_bundle, dirs_of(debian_bundle, tmp_path))
    record = build.records["stage-kernel"]
    assert status == "ran" and record.info["injected_module_files"] == 0
    assert record.outputs["rootfs"] == digest  # byte-identical copy
