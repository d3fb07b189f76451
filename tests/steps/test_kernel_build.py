"""The kernel-build steps (kernel-config, kernel-compile) on a stand-in linux-source package: a real
.deb (dpkg-deb -b) whose tarball holds a Makefile with the targets banger runs (allnoconfig,
olddefconfig, vmlinux, bzImage), so the caching, the config check and the resumed compile are
tested without compiling Linux (the real compile: tests/kernel/test_kernel_build.py, slow)."""
from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from banger.core.errors import BuildError
from banger.core.store import ActionRecord, Store
from banger.engine.tasks import Build
from banger.kernel import compile as kcompile, kconfig
from banger.steps import kernel_build
from tests.conftest import need
from tests.support_kernel import kernel_dirs

# $(CALLS) (from the environment) gets a line per target run; DROP (a regex) is removed by olddefconfig
MAKEFILE = """\
O ?= .
allnoconfig:
\tcp $(KCONFIG_ALLCONFIG) $(O)/.config
\techo config >> $(CALLS)
olddefconfig:
\tsed -i '/$(DROP)/d' $(O)/.config
vmlinux:
\techo compile >> $(CALLS)
\t@echo "  CC      init/main.o"
\tmkdir -p $(O)/include/config $(O)/arch/x86/boot
\techo 6.1.0-fake-banger-microvm > $(O)/include/config/kernel.release
\ttest ! -e $(FAIL)
\tcp $(O)/.config $(O)/vmlinux
bzImage: vmlinux
\tcp $(O)/vmlinux $(O)/arch/x86/boot/bzImage
"""


@pytest.fixture
def source_deb(tmp_path) -> Path:
    need("dpkg-deb", "make", "xz")
    src = tmp_path / "pkg-src"
    (src / "linux-source-6.1").mkdir(parents=True)
    (src / "linux-source-6.1" / "Makefile").write_text(MAKEFILE)
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text("Package: linux-source-6.1\nVersion: 6.1.999-1\nArchitecture: all\n"
                                            "Maintainer: test <test@example.invalid>\nDescription: stand-in\n")
    (pkg / "usr" / "src").mkdir(parents=True)
    with tarfile.open(pkg / "usr" / "src" / "linux-source-6.1.tar.xz", "w:xz") as tar:
        tar.add(src / "linux-source-6.1", arcname="linux-source-6.1")
    deb = tmp_path / "linux-source-6.1_6.1.999-1_all.deb"
    subprocess.run(["dpkg-deb", "-b", "--root-owner-group", str(pkg), str(deb)], check=True, capture_output=True)
    return deb


class Harness:
    def __init__(self, tmp_path: Path, deb: Path, monkeypatch):
        self.dirs = kernel_dirs(tmp_path)
        self.store = Store(self.dirs.cache)
        self.deb_digest = self.store.ingest_file(_copy(deb, tmp_path / "deb-copy"), algorithm="sha256")
        self.calls = tmp_path / "calls.log"
        self.calls.touch()
        monkeypatch.setenv("CALLS", str(self.calls))
        monkeypatch.setenv("DROP", "^$")
        monkeypatch.setenv("FAIL", str(tmp_path / "no-such-file"))
        self.logs: list[str] = []

    def run(self, fragment: dict[str, str]) -> Build:
        build = Build(self.store, self.logs.append)
        build.records[kernel_build.SOURCE] = ActionRecord(key="src", step=kernel_build.SOURCE, step_version="1",
                                                          inputs={}, params={}, tools={},
                                                          outputs={"deb": self.deb_digest})
        steps = list(kernel_build.tasks(build, self.dirs, "linux-source-6.1", "6.1.999-1", fragment, jobs=1))
        assert [t["basename"] for t in steps] == [kernel_build.SOURCE, kernel_build.CONFIG, kernel_build.COMPILE]
        for name in (kernel_build.CONFIG, kernel_build.COMPILE):
            step = build.steps[name]
            if not build.is_cached(step):
                build.execute(step)
        return build

    def made(self) -> list[str]:
        return self.calls.read_text().split()


def _copy(src: Path, dest: Path) -> Path:
    dest.write_bytes(src.read_bytes())
    return dest


def test_a_second_build_is_cached_and_a_config_change_rebuilds(tmp_path, source_deb, monkeypatch):
    h = Harness(tmp_path, source_deb, monkeypatch)
    fragment = kconfig.load("microvm")[0]
    first = h.run(fragment)
    assert h.made() == ["config", "compile"]
    compiled = first.records[kernel_build.COMPILE]
    assert compiled.info["release"] == "6.1.0-fake-banger-microvm"
    assert "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y" in h.store.path(compiled.outputs["vmlinux"]).read_text()
    assert not list((kcompile.build_root(h.dirs.cache)).glob("out-*"))  # the O= tree went

    again = h.run(fragment)
    assert h.made() == ["config", "compile"]  # nothing ran
    assert {r.status for r in again.report} == {"cached"}
    assert again.records[kernel_build.COMPILE].outputs == compiled.outputs

    changed = h.run(kconfig.merge(fragment, {"CONFIG_TUN": "n"}))
    assert h.made() == ["config", "compile", "config", "compile"]
    assert changed.records[kernel_build.COMPILE].outputs["vmlinux"] != compiled.outputs["vmlinux"]
    # the trees go with a finished compile: the source was unpacked again for the new config
    assert sum("unpacking the source" in line for line in h.logs) == 2
    assert not list(kcompile.build_root(h.dirs.cache).glob("src-*/"))


def test_a_failed_compile_keeps_its_tree_and_the_next_run_resumes_in_it(tmp_path, source_deb, monkeypatch):
    h = Harness(tmp_path, source_deb, monkeypatch)
    fail = tmp_path / "fail"
    fail.touch()
    monkeypatch.setenv("FAIL", str(fail))
    with pytest.raises(BuildError, match="the kernel compile failed"):
        h.run(kconfig.load("microvm")[0])
    trees = list(kcompile.build_root(h.dirs.cache).glob("out-*"))
    assert len(trees) == 1 and (trees[0] / "include" / "config" / "kernel.release").is_file()
    assert len([p for p in kcompile.build_root(h.dirs.cache).glob("src-*") if p.is_dir()]) == 1
    fail.unlink()
    h.run(kconfig.load("microvm")[0])
    assert h.made() == ["config", "compile", "compile"]  # configured once; the compile ran again in the kept tree
    assert sum("unpacking the source" in line for line in h.logs) == 1
    assert not list(kcompile.build_root(h.dirs.cache).glob("out-*"))


def test_an_option_kconfig_drops_fails_the_config_step_naming_it(tmp_path, source_deb, monkeypatch):
    h = Harness(tmp_path, source_deb, monkeypatch)
    monkeypatch.setenv("DROP", "CONFIG_PVH=y")
    with pytest.raises(BuildError, match=r"lost 1 option\(s\) .*: CONFIG_PVH=y \(got n\)"):
        h.run(kconfig.load("microvm")[0])
    assert h.made() == ["config"]
