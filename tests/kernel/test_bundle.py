"""Kernel bundles: vmlinux extraction, import from a directory, names, default kernel, CLI."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from banger.engine import tasks as engine
from banger.kernel import bundle as kernel_bundle, debian, sources, suggest, vmlinux
from banger.steps import stage_kernel
from banger.cli.kernel import kernel_app
from banger.engine.tasks import Build
from banger.kernel.bundle import KernelError
from banger.engine.spec import BuildSpec
from banger.core.store import Store
from tests.conftest import need
from tests.support_kernel import fake_elf, kernel_dirs, make_bzimage, make_kernel_tree

RELEASE = "5.10.0-7-test"


@pytest.fixture(autouse=True)
def _depmod():
    need("depmod")


@pytest.mark.parametrize("method", ["gzip", "xz", "lzma", "bzip2", "zstd", "lz4"])
def test_vmlinux_extracts_each_payload_format(tmp_path, method):
    image = tmp_path / "vmlinuz"
    image.write_bytes(make_bzimage(RELEASE, method))
    assert vmlinux.kernel_release(image) == RELEASE
    assert vmlinux.extract(image, tmp_path / "vmlinux") == method
    assert (tmp_path / "vmlinux").read_bytes() == fake_elf(RELEASE)
    assert vmlinux.linux_banner(tmp_path / "vmlinux").startswith(f"Linux version {RELEASE} ")
    assert vmlinux.elf_machine(tmp_path / "vmlinux") == 62


def test_vmlinux_found_by_magic_without_payload_offsets(tmp_path):
    image = tmp_path / "vmlinuz"
    image.write_bytes(make_bzimage(RELEASE, "xz", with_offsets=False))  # boot protocol 2.07
    assert vmlinux.extract(image, tmp_path / "vmlinux") == "xz"
    assert (tmp_path / "vmlinux").read_bytes() == fake_elf(RELEASE)


def test_vmlinux_rejects_a_payload_that_is_not_elf(tmp_path):
    image = tmp_path / "vmlinuz"
    image.write_bytes(make_bzimage(RELEASE, "gzip", elf=b"MZ not an elf" * 100))
    with pytest.raises(vmlinux.VmlinuxError, match="no extractable vmlinux"):
        vmlinux.extract(image, tmp_path / "vmlinux")
    assert not (tmp_path / "vmlinux").exists()


def test_lz4_block_decoder_handles_overlapping_matches():
    # literal "ab", then a 10-byte match at offset 2 (overlaps itself): "ab" * 6
    block = bytes([0x26]) + b"ab" + (2).to_bytes(2, "little") + bytes([0x50]) + b"xyzzy"
    assert bytes(vmlinux.lz4_block(block, 1 << 20)) == b"ab" * 6 + b"xyzzy"
    with pytest.raises(vmlinux.VmlinuxError, match="bad match offset"):
        vmlinux.lz4_block(bytes([0x16]) + b"a" + (9).to_bytes(2, "little") + bytes([0x10]) + b"z", 1 << 20)


def test_import_from_a_root_filesystem_tree(tmp_path):
    dirs = kernel_dirs(tmp_path)
    src = make_kernel_tree(tmp_path / "rootfs", RELEASE)
    (src / "boot" / "vmlinuz-5.9.0-1-test").write_bytes(make_bzimage("5.9.0-1-test"))  # older: ignored
    bundle = sources.import_dir(dirs, "mine", src)
    m = bundle.manifest
    assert (m.name, m.version, m.arch) == ("mine", RELEASE, "amd64")
    assert set(m.files) == {"vmlinuz", "vmlinux", "initrd.img", "modules"}
    assert m.files["vmlinuz"] == "sha256:" + hashlib.sha256((src / "boot" / f"vmlinuz-{RELEASE}").read_bytes()).hexdigest()
    assert (bundle.path / "vmlinux").read_bytes() == fake_elf(RELEASE)
    assert m.info["vmlinux_from"] == "gzip"
    modules = bundle.path / "modules" / RELEASE
    assert (modules / "modules.dep").is_file()  # depmod ran
    assert (modules / "kernel" / "drivers" / "demo" / "notes.txt").read_text() == "demo module data\n"
    assert not (modules / "build").exists() and not (modules / "build").is_symlink()
    assert bundle.digest == "sha256:" + hashlib.sha256((bundle.path / "manifest.json").read_bytes()).hexdigest()
    bundle.verify()
    assert not list((dirs.state / "kernels" / ".staging").iterdir())


def test_import_prefers_metadata_json(tmp_path):
    dirs = kernel_dirs(tmp_path)
    src = make_kernel_tree(tmp_path / "src", "6.6.6-ignored")  # globbing would find this one
    (src / "k").mkdir()
    (src / "k" / "bzImage").write_bytes(make_bzimage(RELEASE, "zstd"))
    (src / "k" / "ramdisk").write_bytes(b"initrd bytes")
    (src / "metadata.json").write_text(json.dumps(
        {"version": RELEASE, "distro": "custom", "arch": "amd64", "vmlinuz": "k/bzImage", "initrd": "k/ramdisk"}))
    bundle = sources.import_dir(dirs, "meta", src)
    assert bundle.version == RELEASE and bundle.manifest.distro == "custom"
    assert set(bundle.manifest.files) == {"vmlinuz", "vmlinux", "initrd.img"}
    assert (bundle.path / "initrd.img").read_bytes() == b"initrd bytes"
    assert bundle.manifest.info["vmlinux_from"] == "zstd"


def test_metadata_paths_must_stay_inside_the_directory(tmp_path):
    dirs = kernel_dirs(tmp_path)
    (tmp_path / "outside").write_bytes(make_bzimage(RELEASE))
    src = tmp_path / "src"
    src.mkdir()
    (src / "metadata.json").write_text(json.dumps({"version": RELEASE, "vmlinuz": "../outside"}))
    with pytest.raises(KernelError, match="points outside the directory"):
        sources.import_dir(dirs, "bad", src)
    assert not (dirs.state / "kernels" / "bad").exists()


def test_import_a_bundle_layout_and_its_manifest_is_checked(tmp_path):
    dirs = kernel_dirs(tmp_path)
    first = sources.import_dir(dirs, "one", make_kernel_tree(tmp_path / "src", RELEASE))
    again = sources.import_dir(dirs, "two", first.path)  # an exported bundle is importable
    assert again.manifest.files == first.manifest.files
    tampered = tmp_path / "tampered"
    shutil.copytree(first.path, tampered, symlinks=True)
    (tampered / "initrd.img").write_bytes(b"evil")
    with pytest.raises(KernelError, match="initrd.img does not match the sha256"):
        sources.import_dir(dirs, "three", tampered)
    assert not (dirs.state / "kernels" / "three").exists()


def test_a_directory_without_a_kernel_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(KernelError, match="no kernel in .*boot/vmlinuz-"):
        sources.import_dir(kernel_dirs(tmp_path), "x", tmp_path / "empty")


def test_replacing_needs_force(tmp_path):
    dirs = kernel_dirs(tmp_path)
    src = make_kernel_tree(tmp_path / "src", RELEASE, modules=False)
    old = sources.import_dir(dirs, "k", src)
    with pytest.raises(KernelError, match="already exists; use --force"):
        sources.import_dir(dirs, "k", src)
    (src / "boot" / f"initrd.img-{RELEASE}").write_bytes(b"new initrd")
    new = sources.import_dir(dirs, "k", src, force=True)
    assert new.digest != old.digest and (new.path / "initrd.img").read_bytes() == b"new initrd"
    assert [b.name for b in kernel_bundle.list_bundles(dirs)] == ["k"]


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "Upper", "x" * 65, "-dash"])
def test_names_are_validated(tmp_path, name):
    dirs = kernel_dirs(tmp_path)
    with pytest.raises(KernelError, match="invalid kernel name"):
        kernel_bundle.load(dirs, name)
    with pytest.raises(KernelError, match="invalid kernel name"):
        sources.import_dir(dirs, name, make_kernel_tree(tmp_path / "src", RELEASE, modules=False))
    assert not (tmp_path / "evil").exists()


def test_missing_kernels_say_what_to_run(tmp_path):
    dirs = kernel_dirs(tmp_path)
    with pytest.raises(KernelError, match=r"run `banger kernel pull debian:cloud-amd64` or `banger kernel list`"):
        kernel_bundle.resolve(dirs)
    with pytest.raises(KernelError, match=r"kernel 'other' is not installed.*`banger kernel list`"):
        kernel_bundle.resolve(dirs, "other")
    build = Build(Store(tmp_path / "store"))
    build.context["dirs"] = dirs
    with pytest.raises(engine.BuildError, match=r"^kernel 'debian-cloud-amd64' is not installed; run `banger kernel pull debian:cloud-amd64`"):
        list(stage_kernel.tasks(build, BuildSpec(image="x")))


def test_a_missing_kernel_names_the_installed_and_the_catalog_ones(tmp_path):
    dirs = kernel_dirs(tmp_path)
    with pytest.raises(KernelError) as err:
        suggest.resolve(dirs, "nosuch")
    assert str(err.value) == ("kernel 'nosuch' is not installed; no kernel is installed; the catalog has "
                              "debian-cloud-amd64 (`banger kernel pull NAME`); see `banger kernel list --available`")
    sources.import_dir(dirs, "mine", make_kernel_tree(tmp_path / "src", RELEASE, modules=False))
    with pytest.raises(KernelError) as err:
        suggest.resolve(dirs, "nosuch")
    assert str(err.value) == ("kernel 'nosuch' is not installed; installed: mine (kernel=NAME); the catalog also "
                              "has debian-cloud-amd64 (`banger kernel pull NAME`); see `banger kernel list --available`")
    with pytest.raises(KernelError) as err:
        suggest.resolve(dirs, kernel_bundle.DEFAULT_KERNEL)
    assert str(err.value) == ("kernel 'debian-cloud-amd64' is not installed; run `banger kernel pull "
                              "debian:cloud-amd64` or pick an installed one: mine (kernel=NAME)")
    assert "pull nosuch" not in str(kernel_bundle_error(dirs, "nosuch"))
    assert suggest.resolve(dirs, "mine").name == "mine"
    with pytest.raises(KernelError, match="invalid kernel name"):
        suggest.resolve(dirs, "Bad/name")


def kernel_bundle_error(dirs, name: str) -> KernelError:
    with pytest.raises(KernelError) as err:
        kernel_bundle.resolve(dirs, name)
    return err.value


def test_default_kernel_comes_from_config(tmp_path):
    dirs = kernel_dirs(tmp_path)
    sources.import_dir(dirs, "mine", make_kernel_tree(tmp_path / "src", RELEASE, modules=False))
    dirs.config.mkdir(parents=True)
    dirs.config_file.write_text(json.dumps({"default_kernel": "mine"}))
    assert kernel_bundle.resolve(dirs).name == "mine"
    assert debian.ensure_default_kernel(dirs).name == "mine"  # nothing to pull


def test_verify_notices_a_modified_file(tmp_path):
    bundle = sources.import_dir(kernel_dirs(tmp_path), "k", make_kernel_tree(tmp_path / "src", RELEASE))
    bundle.verify()  # a full check, which leaves a stat() stamp that later checks trust...
    assert (bundle.path / kernel_bundle.VERIFIED_STAMP).is_file()
    (bundle.path / "modules" / RELEASE / "kernel" / "drivers" / "demo" / "notes.txt").write_text("changed")
    with pytest.raises(KernelError, match="modules does not match its manifest"):
        bundle.verify()  # ...until a write changes a file's stat()


@pytest.fixture
def xdg_dirs(tmp_path, cache_dir, monkeypatch):
    """pyxdg reads $XDG_*_HOME once at import: point its attributes at this test's dirs too."""
    from xdg import BaseDirectory

    monkeypatch.setattr(BaseDirectory, "xdg_state_home", str(tmp_path / "state"))
    monkeypatch.setattr(BaseDirectory, "xdg_config_home", str(tmp_path / "config"))


def test_cli_import_list_show_rm(tmp_path, xdg_dirs):
    runner = CliRunner()
    src = make_kernel_tree(tmp_path / "src", RELEASE)
    result = runner.invoke(kernel_app, ["import", "cli-k", "--from", str(src)])
    assert result.exit_code == 0, result.output
    listed = json.loads(runner.invoke(kernel_app, ["list", "--json"]).output)
    assert [(r["name"], r["version"]) for r in listed] == [("cli-k", RELEASE)]
    shown = json.loads(runner.invoke(kernel_app, ["show", "cli-k", "--json"]).output)
    assert shown["manifest"]["files"]["vmlinuz"].startswith("sha256:")
    assert Path(shown["path"]).parent == tmp_path / "state" / "banger" / "kernels"
    result = runner.invoke(kernel_app, ["show", "nope"])
    assert result.exit_code == 1 and "run `banger kernel list`" in result.output
    assert runner.invoke(kernel_app, ["import", "x"]).exit_code == 1
    assert runner.invoke(kernel_app, ["rm", "cli-k"]).exit_code == 0
    assert json.loads(runner.invoke(kernel_app, ["list", "--json"]).output) == []
    result = runner.invoke(kernel_app, ["rm", "cli-k"])
    assert result.exit_code == 1 and "no kernel named 'cli-k'" in result.output


def _stage_build(tmp_path, dirs, kernel: str):
    from banger.core.store import ActionRecord

    need("mkfs.ext4", "debugfs")
    tree = tmp_path / "tree"
    (tree / "lib").mkdir(parents=True)
    (tree / "etc").mkdir()
    image = tmp_path / "in.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-d", str(tree), str(image), "8M"], check=True, capture_output=True)
    store = Store(tmp_path / "store")
    digest = store.ingest_file(image)
    build = Build(store, log=lambda m: None)
    build.context["dirs"] = dirs
    build.records["inject"] = ActionRecord(key="k", step="inject", step_version="0", inputs={}, params={},
                                           tools={}, outputs={"image": digest})
    list(stage_kernel.tasks(build, BuildSpec(image="x", kernel=kernel)))
    return build, store


def test_stage_kernel_with_a_directory_bundle(tmp_path):
    from banger.rootfs import debugfs

    dirs = kernel_dirs(tmp_path)
    bundle = sources.import_dir(dirs, "k", make_kernel_tree(tmp_path / "src", RELEASE))
    build, store = _stage_build(tmp_path, dirs, "k")
    build.execute(build.steps["stage-kernel"])
    out = build.records["stage-kernel"].outputs
    assert store.path(out["vmlinux"]).read_bytes() == fake_elf(RELEASE)
    assert store.path(out["kernel"]).read_bytes() == (bundle.path / "vmlinuz").read_bytes()
    blocks = debugfs.run(store.path(out["rootfs"]), [f"cat /lib/modules/{RELEASE}/kernel/drivers/demo/notes.txt"])
    assert blocks[0].output == ["demo module data"]
    assert build.records["stage-kernel"].info["injected_module_files"] >= 3  # notes + modules.* from depmod


def test_stage_kernel_refuses_a_modified_bundle(tmp_path):
    dirs = kernel_dirs(tmp_path)
    bundle = sources.import_dir(dirs, "k", make_kernel_tree(tmp_path / "src", RELEASE))
    (bundle.path / "vmlinuz").write_bytes(b"tampered")
    build, store = _stage_build(tmp_path, dirs, "k")
    with pytest.raises(engine.BuildError, match=r"^kernel k: vmlinuz does not match its manifest"):
        build.execute(build.steps["stage-kernel"])
    assert "stage-kernel" not in build.records
