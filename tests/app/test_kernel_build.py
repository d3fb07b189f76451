"""`banger kernel build` through doit (app.kernel_build) on the stand-in linux-source package of
tests/steps/test_kernel_build.py: apt-get download is the one thing replaced (it would reach the
host's mirror); the three steps, the bundle and the default selection are real."""
from __future__ import annotations

import shutil

import pytest

from banger.app import kernel_build
from banger.kernel import apt, bundle, compile as kcompile
from banger.kernel.errors import KernelError
from tests.steps.test_kernel_build import source_deb  # noqa: F401  (fixture)
from tests.support_kernel import kernel_dirs


@pytest.fixture
def fake_apt(source_deb, monkeypatch, tmp_path):  # noqa: F811
    downloads = []

    def download(package, dest_dir):
        downloads.append(package)
        return shutil.copy(source_deb, dest_dir / source_deb.name) and dest_dir / source_deb.name

    monkeypatch.setattr(apt, "apt_download", download)
    monkeypatch.setattr(kcompile, "candidate_version", lambda package: "6.1.999-1")
    calls = tmp_path / "calls.log"
    calls.touch()
    for var, value in (("CALLS", str(calls)), ("DROP", "^$"), ("FAIL", str(tmp_path / "no-such-file"))):
        monkeypatch.setenv(var, value)
    return downloads


def test_build_installs_a_default_bundle_and_a_second_build_is_cached(tmp_path, fake_apt):
    dirs = kernel_dirs(tmp_path)
    logs: list[str] = []
    built, installed = kernel_build.build(dirs, "microvm", jobs=1, log=logs.append)
    assert installed and fake_apt == ["linux-source-6.1"]
    assert sorted(built.manifest.files) == ["config", "vmlinux", "vmlinuz"]
    assert built.built and built.version == "6.1.0-fake-banger-microvm"
    assert built.manifest.source == "build:debian:linux-source-6.1+microvm"
    assert bundle.default_name(dirs) == "microvm"
    assert any(line.startswith("kernel build: kernel-compile ran") for line in logs)

    logs.clear()
    again, installed = kernel_build.build(dirs, "microvm", jobs=1, log=logs.append)
    assert not installed and again.digest == built.digest and fake_apt == ["linux-source-6.1"]
    for step in ("kernel-source", "kernel-config", "kernel-compile"):
        assert any(line.startswith(f"kernel build: {step} cached") for line in logs), logs


def test_bad_input_is_one_error_line(tmp_path, fake_apt):
    dirs = kernel_dirs(tmp_path)
    with pytest.raises(KernelError, match="unknown kernel source 'ubuntu:linux'; use debian:linux-source-X.Y"):
        kernel_build.build(dirs, "k", source="ubuntu:linux")
    with pytest.raises(KernelError, match="cannot read the config fragment"):
        kernel_build.build(dirs, "k", config_choice=str(tmp_path / "nope.config"))
    with pytest.raises(KernelError, match="--jobs 0: give at least 1"):
        kernel_build.build(dirs, "k", jobs=0)
    with pytest.raises(KernelError, match="invalid kernel name"):
        kernel_build.build(dirs, "Bad Name")
    assert fake_apt == []
