"""Time the kernel pieces on a real Debian kernel package.

    PYTHONPATH=. python3 bench/bench_kernel.py KERNEL.deb BUSYBOX [--image ROOTFS.ext4] [--boot]

KERNEL.deb: a linux-image-*.deb (e.g. the one tests cache under cache/test-fixtures/kernel/);
BUSYBOX: a static busybox (from the busybox-static package). --image: an ext4 image to run the
stage-kernel work on (module injection); --boot: also boot the generated initramfs under QEMU
(TCG) on a tiny disk and time the marker printed by its /sbin/init. Everything happens in a
temporary directory.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from banger.core import config
from banger.kernel import initrd, debian as kernel_deb, kmod, vmlinux
from banger.steps import stage_kernel  # noqa: E402


def timed(label: str, results: dict, fn, *args, **kwargs):
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    results[label] = time.perf_counter() - start
    return value


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("deb", type=Path)
    ap.add_argument("busybox", type=Path)
    ap.add_argument("--image", type=Path)
    ap.add_argument("--boot", action="store_true")
    args = ap.parse_args()
    t: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-kernel-") as tmp:
        work = Path(tmp)
        staged = timed("dpkg-deb -x + layout", t, kernel_deb.stage_deb, args.deb, work)
        payload = timed("vmlinux extract", t, vmlinux.extract, staged.dir / "vmlinuz", work / "vmlinux")
        root = staged.dir / "modules" / staged.version
        index = timed("module index", t, kmod.ModuleIndex, root)
        order = timed("load order", t, index.load_order, kmod.WANTED_FOR_BOOT, kmod.REQUIRED_FOR_BOOT)
        result = timed("initrd build", t, initrd.build, root, args.busybox, work / "initrd.img")
        dirs = config.Dirs(cache=work / "cache", state=work / "state", config=work / "config")
        bundle = timed("import_deb (all of it)", t, kernel_deb.import_deb, dirs, "bench", args.deb,
                       busybox=args.busybox)
        if args.image:
            out = work / "stage"
            out.mkdir()
            staged_k = timed("stage (copy+verify+inject)", t, stage_kernel.stage, args.image, bundle, out)
        if args.boot:
            from tests.support_kernel import boot_qemu, make_disk

            disk = make_disk(work / "disk.ext4", args.busybox, "echo BENCH-MARKER\n/bin/busybox poweroff -f\n")
            boot = boot_qemu(bundle.path / "vmlinuz", bundle.path / "initrd.img", disk, "BENCH-MARKER")
    print(f"kernel {staged.version}: payload {payload}, {len(order)} modules in the initramfs: "
          f"{' '.join(m.name for m in order)}")
    print(f"initramfs: {result.size} bytes")
    for label, seconds in t.items():
        print(f"  {label:<28} {seconds:7.2f} s")
    if args.image:
        print(f"  injected {staged_k.injected_files} files, grew the fs by {staged_k.grown_by >> 20} MiB")
    if args.boot:
        print(f"  QEMU TCG: marker after {boot.marker_at:.1f} s, exit after {boot.seconds:.1f} s")


if __name__ == "__main__":
    main()
