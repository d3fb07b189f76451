"""Which kernel is the default: config.json's default_kernel, else the newest bundle `kernel
build` made, else the Debian cloud kernel (the fallback); `kernel list` says which is which."""
from __future__ import annotations

import json

from banger.kernel import bundle, sources
from banger.kernel.bundle import Staged
from tests.cli.test_cli import banger
from tests.support_kernel import kernel_dirs, make_bzimage, make_kernel_tree


def install_built(dirs, name: str, release: str) -> bundle.Bundle:
    """A bundle as `kernel build` installs it: vmlinuz + config, no modules, no initrd."""
    with bundle.staging(dirs, name) as work:
        d = work / "b"
        d.mkdir()
        (d / "vmlinuz").write_bytes(make_bzimage(release))
        (d / "config").write_text("CONFIG_MODULES=n\n")
        return bundle.commit(dirs, name, Staged(d, release, arch="amd64", distro="banger",
                                                 info={"built": {"key": name}}), source="build:test")


def test_a_built_kernel_is_the_default_and_the_debian_kernel_the_fallback(tmp_path):
    dirs = kernel_dirs(tmp_path)
    sources.import_dir(dirs, bundle.DEFAULT_KERNEL, make_kernel_tree(tmp_path / "src", "6.1.0-9-cloud-amd64"))
    assert bundle.default_name(dirs) == bundle.DEFAULT_KERNEL  # nothing built: as before
    built = install_built(dirs, "microvm", "6.1.99-banger-microvm")
    assert built.built and built.modules_root is None and built.file("initrd.img") is None
    assert bundle.default_name(dirs) == "microvm"
    assert bundle.resolve(dirs).name == "microvm"
    dirs.config.mkdir(parents=True, exist_ok=True)
    dirs.config_file.write_text(json.dumps({"default_kernel": bundle.DEFAULT_KERNEL}))
    assert bundle.default_name(dirs) == bundle.DEFAULT_KERNEL  # the user's choice wins
    dirs.config_file.write_text("{}")
    bundle.remove(dirs, "microvm")
    assert bundle.default_name(dirs) == bundle.DEFAULT_KERNEL


def test_kernel_list_says_which_is_the_default_and_which_the_fallback(tmp_path):
    dirs = kernel_dirs(tmp_path)
    sources.import_dir(dirs, bundle.DEFAULT_KERNEL, make_kernel_tree(tmp_path / "src", "6.1.0-9-cloud-amd64"))
    install_built(dirs, "microvm", "6.1.99-banger-microvm")
    env = {"XDG_STATE_HOME": str(dirs.state.parent / "xdg-state"), "XDG_CONFIG_HOME": str(dirs.config),
           "BANGER_CACHE_DIR": str(dirs.cache)}
    (dirs.state.parent / "xdg-state").mkdir()
    (dirs.state.parent / "xdg-state" / "banger").symlink_to(dirs.state)
    out = banger("kernel", "list", "--json", env=env)
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["microvm"]["role"] == "default" and rows["microvm"]["built"]
    assert rows[bundle.DEFAULT_KERNEL]["role"] == "fallback"
    text = banger("kernel", "list", env=env).stdout
    assert any(line.startswith("* microvm") and "default" in line for line in text.splitlines()), text
    assert any(bundle.DEFAULT_KERNEL in line and "fallback" in line for line in text.splitlines()), text
