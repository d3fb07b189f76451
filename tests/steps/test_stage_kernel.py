"""The stage-kernel step on real ext4 images (mkfs.ext4 -d, debugfs): with injected modules, an image
that has systemd's kmod-static-nodes.service but no `kmod` gets the unit masked, any other image
does not. (Module injection itself and the real Debian kernel: tests/kernel.)"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from banger.core.store import ActionRecord, Store
from banger.engine.spec import BuildSpec
from banger.engine.tasks import Build
from banger.kernel import sources
from banger.rootfs import debugfs
from banger.steps import stage_kernel
from tests.conftest import need
from tests.support_kernel import kernel_dirs, make_kernel_tree

RELEASE = "5.10.0-7-test"
MASK = "/etc/systemd/system/kmod-static-nodes.service"
# systemd 252's unit as Debian bookworm ships it (trimmed)
UNIT = """[Unit]
Description=Create List of Static Device Nodes
ConditionFileNotEmpty=/lib/modules/%v/modules.devname

[Service]
Type=oneshot
ExecStart=/bin/kmod static-nodes --format=tmpfiles --output=/run/tmpfiles.d/static-nodes.conf
"""


@pytest.fixture(autouse=True)
def _tools():
    need("mkfs.ext4", "debugfs", "e2fsck", "depmod")


def make_image(tmp_path: Path, files: dict[str, str], links: dict[str, str] = ()) -> Path:
    """A merged-/usr ext4 image (bin, lib -> usr/...) holding `files` and `links`."""
    tree = tmp_path / "tree"
    for d in ("usr/bin", "usr/lib", "etc/systemd/system"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    (tree / "bin").symlink_to("usr/bin")
    (tree / "lib").symlink_to("usr/lib")
    for path, text in files.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_text(text)
    for path, target in dict(links).items():
        (tree / path).symlink_to(target)
    image = tmp_path / "in.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-d", str(tree), str(image), "16M"], check=True, capture_output=True)
    return image


def stage(tmp_path: Path, image: Path, modules: bool = True) -> tuple[Build, Path]:
    dirs = kernel_dirs(tmp_path)
    sources.import_dir(dirs, "k", make_kernel_tree(tmp_path / "src", RELEASE, modules=modules))
    store = Store(tmp_path / "store")
    build = Build(store, log=lambda m: None)
    build.context["dirs"] = dirs
    build.records["inject"] = ActionRecord(key="k", step="inject", step_version="0", inputs={}, params={},
                                           tools={}, outputs={"image": store.ingest_file(image)})
    list(stage_kernel.tasks(build, BuildSpec(image="x", kernel="k")))
    build.execute(build.steps["stage-kernel"])
    return build, store.path(build.records["stage-kernel"].outputs["rootfs"])


def stat(rootfs: Path, path: str) -> str:
    return "\n".join(debugfs.run(rootfs, [f"stat {debugfs.quote(path)}"])[0].output)


def test_modules_into_an_image_without_kmod_mask_the_static_nodes_unit(tmp_path):
    image = make_image(tmp_path, {"usr/lib/systemd/system/kmod-static-nodes.service": UNIT})
    build, rootfs = stage(tmp_path, image)
    record = build.records["stage-kernel"]
    assert record.info["injected_module_files"] > 0 and record.info["masked_units"] == [stage_kernel.STATIC_NODES_UNIT]
    link = stat(rootfs, MASK)
    assert "Type: symlink" in link and 'Fast link dest: "/dev/null"' in link, link
    assert "User:     0   Group:     0" in link
    fsck = subprocess.run(["e2fsck", "-fn", str(rootfs)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_an_image_with_kmod_keeps_the_unit(tmp_path):
    # the unit names /bin/kmod; the image has it as usr/bin/kmod behind its bin -> usr/bin link
    image = make_image(tmp_path, {"usr/lib/systemd/system/kmod-static-nodes.service": UNIT,
                                  "usr/bin/kmod": "#!/bin/sh\n"})
    build, rootfs = stage(tmp_path, image)
    assert build.records["stage-kernel"].info["masked_units"] == []
    assert stage_kernel.NOT_FOUND in stat(rootfs, MASK)


@pytest.mark.parametrize("case", ["no modules injected", "the admin's own unit", "no such unit"])
def test_the_unit_is_left_alone(tmp_path, case):
    files = {"usr/lib/systemd/system/kmod-static-nodes.service": UNIT}
    if case == "the admin's own unit":
        files[MASK.lstrip("/")] = UNIT.replace("/bin/kmod", "/usr/local/bin/static-nodes")
    if case == "no such unit":
        files = {"etc/inittab": "::sysinit:/etc/init.d/rcS\n"}
    build, rootfs = stage(tmp_path, make_image(tmp_path, files), modules=case != "no modules injected")
    assert build.records["stage-kernel"].info["masked_units"] == []
    after = stat(rootfs, MASK)
    assert ("Type: regular" in after) if case == "the admin's own unit" else (stage_kernel.NOT_FOUND in after)


def test_a_bundle_without_modules_stages_the_image_itself(tmp_path, monkeypatch):
    """A module-less bundle (what `kernel build` makes) puts nothing into the rootfs: the step's
    rootfs output is the inject step's image, the same store object; it is neither copied nor
    checked again (the ~1 s of copy + fsck + hash per template edit the step cost before)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the rootfs was copied or checked again")

    monkeypatch.setattr(stage_kernel.fsutil, "copy_sparse", refuse)
    monkeypatch.setattr(stage_kernel.e2fs, "fsck", refuse)
    image = make_image(tmp_path, {"usr/lib/systemd/system/kmod-static-nodes.service": UNIT})
    dirs = kernel_dirs(tmp_path)
    src = make_kernel_tree(tmp_path / "src", RELEASE, modules=False, initrd=False)
    sources.import_dir(dirs, "k", src)
    store = Store(tmp_path / "store")
    build = Build(store, log=lambda m: None)
    build.context["dirs"] = dirs
    injected = store.ingest_file(image)
    build.records["inject"] = ActionRecord(key="k", step="inject", step_version="0", inputs={}, params={},
                                           tools={}, outputs={"image": injected})
    list(stage_kernel.tasks(build, BuildSpec(image="x", kernel="k")))
    build.execute(build.steps["stage-kernel"])
    record = build.records["stage-kernel"]
    assert record.outputs["rootfs"] == injected
    assert "initrd" not in record.outputs and record.info["injected_module_files"] == 0
    assert store.record_valid(store.get_record(record.key))
