"""Kernel config fragments (banger.kernel.kconfig): parse, merge over the built-in microVM
fragment, and the check that a finished .config kept every option asked for."""
from __future__ import annotations

import pytest

from banger.kernel import kconfig
from banger.kernel.errors import KernelError

REQUIRED_Y = ("CONFIG_VIRTIO_PCI", "CONFIG_VIRTIO_MMIO", "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES",
              "CONFIG_VIRTIO_BLK", "CONFIG_VIRTIO_NET", "CONFIG_VIRTIO_VSOCKETS", "CONFIG_HW_RANDOM_VIRTIO",
              "CONFIG_EXT4_FS", "CONFIG_DEVTMPFS", "CONFIG_DEVTMPFS_MOUNT", "CONFIG_CGROUPS",
              "CONFIG_NAMESPACES", "CONFIG_SERIAL_8250_CONSOLE", "CONFIG_PVH", "CONFIG_UNIX98_PTYS")


def test_the_builtin_fragment_asks_for_a_microvm_kernel_without_modules_or_initramfs():
    options, label = kconfig.load("microvm")
    assert label == "microvm"
    for option in REQUIRED_Y:
        assert options[option] == "y", option
    assert options["CONFIG_MODULES"] == "n" and options["CONFIG_BLK_DEV_INITRD"] == "n"
    assert options["CONFIG_DEBUG_INFO"] == "n" and options["CONFIG_DEBUG_INFO_BTF"] == "n"


def test_a_user_fragment_is_merged_over_the_builtin_one_and_its_lines_win(tmp_path):
    extra = tmp_path / "mine.config"
    extra.write_text("# mine\nCONFIG_TUN=n\n# CONFIG_FUSE_FS is not set\nCONFIG_NFT_SET=y\n\n")
    options, label = kconfig.load(str(extra))
    assert label == "microvm+mine.config"
    assert options["CONFIG_TUN"] == "n" and options["CONFIG_FUSE_FS"] == "n" and options["CONFIG_NFT_SET"] == "y"
    assert options["CONFIG_VIRTIO_BLK"] == "y"  # the rest of the built-in fragment stays
    assert kconfig.digest(options) != kconfig.digest(kconfig.load("microvm")[0])


def test_merge_and_render_round_trip():
    merged = kconfig.merge({"CONFIG_A": "y", "CONFIG_B": "y"}, {"CONFIG_B": "n", "CONFIG_C": '"x"'})
    assert merged == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": '"x"'}
    assert kconfig.parse(kconfig.render(merged)) == merged


def test_check_names_every_option_the_finished_config_dropped():
    wanted = {"CONFIG_A": "y", "CONFIG_B": "y", "CONFIG_C": "n", "CONFIG_D": "64", "CONFIG_E": "n"}
    dot_config = ("#\n# Automatically generated file; DO NOT EDIT.\n#\nCONFIG_A=y\n"
                  "# CONFIG_B is not set\nCONFIG_C=y\nCONFIG_D=64\n")
    assert kconfig.check(wanted, dot_config) == ["CONFIG_B=y (got n)", "CONFIG_C=n (got y)"]
    assert kconfig.check({"CONFIG_A": "y"}, "CONFIG_A=y\n") == []


@pytest.mark.parametrize("text", ["CONFIG_A y\n", "VIRTIO=y\n"])
def test_a_malformed_fragment_line_is_one_error_naming_it(tmp_path, text):
    bad = tmp_path / "bad.config"
    bad.write_text("CONFIG_OK=y\n" + text)
    with pytest.raises(KernelError, match=r"bad.config line 2: .* is not `CONFIG_X=value`"):
        kconfig.load(str(bad))


def test_an_unreadable_fragment_is_one_error(tmp_path):
    with pytest.raises(KernelError, match="cannot read the config fragment .*give `microvm`"):
        kconfig.load(str(tmp_path / "missing.config"))
