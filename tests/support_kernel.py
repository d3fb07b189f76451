"""Kernel test support: synthetic bzImages, the real Debian cloud kernel (fetched once into the
fixture cache), static busybox, tiny ext4 test disks and a QEMU (TCG) boot runner."""
from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from banger.core import config
from banger.kernel import apt, debian as kernel_deb
from banger.kernel.bundle import Bundle, KernelError
from tests.support_tools import need

FLAVOUR = "cloud-amd64"


# ---- synthetic kernels -------------------------------------------------------------------------
def fake_elf(release: str) -> bytes:
    """An ELF64 x86_64 header followed by a kernel-like banner and filler."""
    header = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack("<HH", 2, 62) + b"\0" * 44
    banner = b"Linux version " + release.encode() + b" (test@banger) #1 SMP\0"
    return header + b"\0" * 64 + banner + bytes(range(256)) * 64 + b"\x55" * 8192


def compress(data: bytes, method: str) -> bytes:
    if method == "gzip":
        return gzip.compress(data, mtime=0)
    if method == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    if method == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_ALONE)
    if method == "bzip2":
        return bz2.compress(data)
    if method == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().compress(data)
    if method == "lz4":
        need("lz4")
        return subprocess.run(["lz4", "-l", "-9", "-c"], input=data, capture_output=True, check=True).stdout
    raise ValueError(method)


def make_bzimage(release: str, method: str = "gzip", elf: bytes | None = None, with_offsets: bool = True) -> bytes:
    """A minimal bzImage: setup header (HdrS, kernel_version, payload_offset/length) + payload."""
    elf = elf if elf is not None else fake_elf(release)
    payload = compress(elf, method) + struct.pack("<I", len(elf))
    setup = bytearray(1024)  # setup_sects = 1 -> (1 + 1) * 512 bytes
    setup[0x1F1] = 1
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x20F if with_offsets else 0x207)
    text = f"{release} (test@banger) #1 SMP".encode() + b"\0"
    setup[0x300:0x300 + len(text)] = text
    struct.pack_into("<H", setup, 0x20E, 0x300 - 0x200)
    decompressor = b"\x90" * 512  # stands in for the real-mode/decompressor code
    if with_offsets:
        struct.pack_into("<II", setup, 0x248, len(decompressor), len(payload))
    return bytes(setup) + decompressor + payload


def make_kernel_tree(root: Path, release: str, modules: bool = True, initrd: bool = True) -> Path:
    """A root-filesystem-like directory: boot/vmlinuz-<r>, boot/initrd.img-<r>, lib/modules/<r>."""
    (root / "boot").mkdir(parents=True)
    (root / "boot" / f"vmlinuz-{release}").write_bytes(make_bzimage(release))
    if initrd:
        (root / "boot" / f"initrd.img-{release}").write_bytes(gzip.compress(b"fake initrd", mtime=0))
    if modules:
        mod = root / "lib" / "modules" / release
        (mod / "kernel" / "drivers" / "demo").mkdir(parents=True)
        (mod / "kernel" / "drivers" / "demo" / "notes.txt").write_text("demo module data\n")
        (mod / "modules.order").write_text("")
        (mod / "modules.builtin").write_text("")
        (mod / "build").symlink_to("/usr/src/linux-headers-" + release)
    return root


def kernel_dirs(tmp: Path) -> config.Dirs:
    return config.Dirs(cache=tmp / "cache", state=tmp / "state", config=tmp / "config")


# ---- the real Debian kernel --------------------------------------------------------------------
def _cached_deb(cache: Path, package: str) -> Path:
    """`apt-get download` package into cache once (kept across runs; older versions dropped)."""
    found = sorted(cache.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    tmp = cache / f".download-{package}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    deb = apt.apt_download(package, tmp)
    final = cache / deb.name
    deb.rename(final)
    shutil.rmtree(tmp)
    return final


@pytest.fixture(scope="session")
def debian_kernel_deb(fixture_cache) -> Path:
    need("apt-get", "apt-cache", "dpkg-deb")
    cache = fixture_cache / "kernel"
    cache.mkdir(exist_ok=True)
    try:
        package = apt.resolve_image_package(FLAVOUR)
    except KernelError:
        cached = sorted(cache.glob(f"linux-image-*-{FLAVOUR}_*.deb"))
        if not cached:
            raise
        return cached[-1]
    deb = _cached_deb(cache, package)
    for old in cache.glob(f"linux-image-*-{FLAVOUR}_*.deb"):
        if old != deb:
            old.unlink()
    return deb


@pytest.fixture(scope="session")
def busybox_static(fixture_cache, tmp_path_factory) -> Path:
    need("apt-get", "dpkg-deb")
    cache = fixture_cache / "kernel"
    cache.mkdir(exist_ok=True)
    deb = _cached_deb(cache, "busybox-static")
    tree = tmp_path_factory.mktemp("busybox")
    apt.deb_extract(deb, tree)
    return tree / "bin" / "busybox"


@pytest.fixture(scope="session")
def debian_bundle(debian_kernel_deb, busybox_static, tmp_path_factory) -> Bundle:
    need("depmod")
    dirs = kernel_dirs(tmp_path_factory.mktemp("kernels"))
    return kernel_deb.import_deb(dirs, "debian-cloud-amd64", debian_kernel_deb, busybox=busybox_static)


def deb_release(deb: Path) -> str:
    """linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb -> 6.1.0-56-cloud-amd64"""
    return deb.name.split("_", 1)[0].removeprefix("linux-image-")


# ---- disks and VMs -----------------------------------------------------------------------------
def make_disk(path: Path, busybox: Path, init_script: str, size: str = "32M", merged_usr: bool = False,
              extra_dirs: tuple[str, ...] = ()) -> Path:
    """An ext4 image whose /sbin/init is `init_script` run by a static busybox."""
    need("mkfs.ext4")
    tree = path.parent / (path.name + ".tree")
    shutil.rmtree(tree, ignore_errors=True)
    for d in ("bin", "sbin", "dev", "proc", "sys", "tmp", *extra_dirs):
        (tree / d).mkdir(parents=True, exist_ok=True)
    if merged_usr:
        (tree / "usr" / "lib").mkdir(parents=True)
        (tree / "lib").symlink_to("usr/lib")
    shutil.copyfile(busybox, tree / "bin" / "busybox")
    (tree / "bin" / "busybox").chmod(0o755)
    (tree / "sbin" / "init").write_text("#!/bin/busybox sh\n" + init_script)
    (tree / "sbin" / "init").chmod(0o755)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(path), size], check=True,
                   capture_output=True)
    shutil.rmtree(tree)
    return path


@dataclass
class Boot:
    output: str
    seconds: float
    marker_at: float | None
    returncode: int | None


def boot_qemu(kernel: Path, initrd: Path, disk: Path, marker: str, append: str = "root=/dev/vda rw",
              timeout: float = 120.0) -> Boot:
    """Boot under QEMU TCG (-M pc: microvm hangs under TCG here); stop when QEMU exits."""
    need("qemu-system-x86_64")
    argv = ["qemu-system-x86_64", "-M", "pc", "-m", "512", "-nographic", "-no-reboot",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", f"console=ttyS0 panic=-1 {append}",
            "-drive", f"file={disk},if=virtio,format=raw"]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    lines: list[str] = []
    marker_at = None
    try:
        assert proc.stdout is not None
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        buf = b""
        while time.monotonic() - start < timeout:
            if not sel.select(timeout=1.0):
                if proc.poll() is not None:
                    break
                continue
            chunk = proc.stdout.read1(65536)
            if not chunk:
                break
            buf += chunk
            *done, buf = buf.split(b"\n")
            for raw in done:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                lines.append(line)
                if marker_at is None and marker in line:
                    marker_at = time.monotonic() - start
        lines.append(buf.decode("utf-8", "replace"))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    return Boot("\n".join(lines), time.monotonic() - start, marker_at, proc.returncode)


def vm_home(root: Path, bundle: Bundle) -> dict[str, str]:
    """A private banger home under root for tests that boot real VMs (cache, state, config, ssh
    config, HOME), its kernels dir linked to `bundle`'s: the environment variables that use it."""
    state = root / "state" / "banger"
    state.mkdir(parents=True)
    (state / "kernels").symlink_to(bundle.path.parent)
    return {"BANGER_CACHE_DIR": str(root / "cache"), "XDG_STATE_HOME": str(root / "state"),
            "XDG_CONFIG_HOME": str(root / "config"), "BANGER_SSH_CONFIG": str(root / "ssh_config"),
            "HOME": str(root / "home")}
