"""`banger kernel build` for real: Debian's linux-source-6.1 compiled with the microVM fragment
(once: the build's cache dir lives in the fixture cache, outside the clone, so later sessions
find every step cached), then the Debian test image built and booted to SSH with it, without
initramfs or modules, as the default kernel."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from banger.core import images
from banger.core.config import volatile_trees_dir
from banger.core.fsutil import remove_tree
from banger.core.store import Store
from tests.support_tools import REPO, need

pytestmark = pytest.mark.slow
TOOLCHAIN = ("make", "gcc", "flex", "bison", "bc", "apt-get", "dpkg-deb")


def banger(env, *args, timeout=3600):
    proc = subprocess.run([sys.executable, "-m", "banger", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=REPO, timeout=timeout)
    assert proc.returncode == 0, f"banger {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="session")
def microvm_kernel(fixture_cache, tmp_path_factory):
    """(env, `kernel build` stderr): the kernel bundle "microvm" installed in a fresh state dir;
    its steps and build trees cached under the fixture cache (compiled on a cold one)."""
    need(*TOOLCHAIN)
    cache = fixture_cache / "microvm-kernel" / "cache"
    cache.parent.mkdir(exist_ok=True)
    root = tmp_path_factory.mktemp("microvm-kernel")
    env = {"BANGER_CACHE_DIR": str(cache), "XDG_STATE_HOME": str(root / "state"),
           "XDG_CONFIG_HOME": str(root / "config")}
    built = banger(env, "kernel", "build", "microvm", "--jobs", str(len(os.sched_getaffinity(0))))
    yield env, built.stderr
    ram = volatile_trees_dir(cache.resolve())
    if ram is not None:
        remove_tree(ram)


def test_the_built_kernel_has_no_modules_no_initramfs_and_is_the_default(microvm_kernel):
    env, _ = microvm_kernel
    shown = json.loads(banger(env, "kernel", "show", "microvm", "--json").stdout)
    assert sorted(shown["files"]) == ["config", "vmlinux", "vmlinuz"]
    assert shown["role"] == "default" and shown["built"]
    assert shown["version"].endswith("-banger-microvm")
    config = open(os.path.join(shown["path"], "config")).read()
    for line in ("# CONFIG_MODULES is not set", "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y", "CONFIG_PVH=y",
                 "CONFIG_VIRTIO_BLK=y", "CONFIG_EXT4_FS=y", "# CONFIG_BLK_DEV_INITRD is not set"):
        assert line in config.splitlines(), line


def test_a_second_build_is_all_cached(microvm_kernel):
    env, _ = microvm_kernel
    again = banger(env, "kernel", "build", "microvm")
    for step in ("kernel-source", "kernel-config", "kernel-compile"):
        assert f"kernel build: {step} cached" in again.stderr, again.stderr
    assert "up to date: kernel microvm" in again.stdout


@pytest.fixture(scope="session")
def microvm_boot(microvm_kernel, debian_image_ref, tmp_path_factory):
    need("qemu-system-x86_64", "mkfs.ext4", "debugfs", "e2fsck")
    kernel_env, _ = microvm_kernel
    root = tmp_path_factory.mktemp("microvm-boot")
    state = root / "state" / "banger"
    state.mkdir(parents=True)
    (state / "kernels").symlink_to(os.path.join(kernel_env["XDG_STATE_HOME"], "banger", "kernels"))
    env = {"BANGER_CACHE_DIR": str(root / "cache"), "XDG_STATE_HOME": str(root / "state"),
           "XDG_CONFIG_HOME": str(root / "config")}
    result = json.loads(banger(env, "build", f"image={debian_image_ref}", "--json").stdout)  # default kernel
    yield env, result
    ram = volatile_trees_dir((root / "cache").resolve())
    if ram is not None:
        remove_tree(ram)


def test_the_debian_image_boots_to_ssh_with_it_without_initramfs(microvm_boot):
    _, result = microvm_boot
    steps = {s["step"]: s for s in result["steps"]}
    assert steps["boot"]["status"] == "ran"
    assert "initrd" not in result["artifacts"]
    probe = json.loads(open(result["artifacts"]["boot-result"]).read())
    assert probe["uid"] == 0 and probe["os_release"]["ID"] == "debian"
    assert all(u["load"] == "loaded" and u["result"] == "success" for u in probe["units"].values()), probe["units"]
    assert probe["units"]["banger-network.service"]["active"] == "active"
    # no unit failed for want of a kernel feature (cgroups, namespaces, autofs, ...)
    assert probe["failed_units"] == [] and probe["system_state"] != "degraded", probe
    assert probe["clean_shutdown"]


def test_stage_kernel_with_it_passes_the_image_through(microvm_boot):
    """No modules to add: stage-kernel's rootfs is inject's image (no new copy in the cache)."""
    env, result = microvm_boot
    store = Store(Path(env["BANGER_CACHE_DIR"]))
    keys = {s["step"]: s["key"] for s in images.load(store, result["image"]).steps}
    staged = store.get_record(keys["stage-kernel"])
    assert staged.outputs["rootfs"] == store.get_record(keys["inject"]).outputs["image"]
    assert staged.info["injected_module_files"] == 0 and staged.info["bundle"] == "microvm"

