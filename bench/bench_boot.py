"""Time the boot step's parts: the KVM probe, the backend choice and a VM boot, phase by phase.

    PYTHONPATH=. python3 bench/bench_boot.py KERNEL [--rootfs IMG --initrd INITRD [--vmlinux ELF]] [--repeat N]
        [--cmdline ARGS] [--variant NAME=ARGS ...] [--rootfs-variant NAME=IMG ...]

Without --rootfs the kernel boots with no disk and panics (a pure kernel-start measure: VMM
start -> "Linux version" -> "Run /init"-or-panic -> VMM exit). With a staged rootfs (the
stage-kernel step's outputs: rootfs, kernel, initrd, and vmlinux, which QEMU boots directly
under TCG) it runs the whole boot step: console readiness, SSH login, probe, shutdown, as
`boot.boot_and_probe` reports them. The SSH login uses banger's managed key from
the state dir (the boot passes it on the kernel command line; --state to pick another); run dirs
go to a temporary dir.

Under TCG the host's other load moves every number by seconds: compare variants with
--variant/--rootfs-variant, which boot them interleaved (A B A B ...), not in separate runs.
`--variant fast=mitigations=off` adds kernel arguments to --cmdline; `--rootfs-variant new=IMG`
boots another image (e.g. one built from edited templates) with the same kernel and initrd.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from banger.steps import boot
from banger.core import config
from banger.hypervisor import backends, choice as hypervisor, kvm, vm as vmmod
from banger.core.config import Dirs


def kernel_only(kernel: Path, choice: hypervisor.Choice, state: Path, cmdline: str) -> dict[str, float]:
    t: dict[str, float] = {}
    start = time.perf_counter()
    vm = backends.create(choice, vmmod.VMConfig(kernel=kernel, run_dir=vmmod.new_run_dir(state),
                                             cmdline=f"panic=-1 {cmdline}".strip()))
    with vm:
        t["vmm_started"] = time.perf_counter() - start
        vm.wait_for_console_line(r"Linux version", timeout=300)
        t["kernel_banner"] = time.perf_counter() - start
        vm.wait_for_console_line(r"Run /init|Kernel panic", timeout=300)
        t["init_or_panic"] = time.perf_counter() - start
        vm.wait_exit(300)
        t["vmm_exited"] = time.perf_counter() - start
    t["stopped"] = time.perf_counter() - start
    return t


def named(values: list[str], what: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name:
            raise SystemExit(f"{what} {value!r} is not NAME=VALUE")
        pairs.append((name, rest))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kernel", type=Path)
    parser.add_argument("--rootfs", type=Path)
    parser.add_argument("--initrd", type=Path)
    parser.add_argument("--vmlinux", type=Path, help="the uncompressed kernel (stage-kernel's `vmlinux`)")
    parser.add_argument("--hypervisor", default="auto")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cmdline", default="", help="extra kernel arguments for every boot")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                        help="also boot with these extra kernel arguments, interleaved")
    parser.add_argument("--rootfs-variant", action="append", default=[], metavar="NAME=IMG",
                        help="also boot this rootfs, interleaved")
    parser.add_argument("--state", type=Path, help="state dir holding banger's managed SSH key "
                                                    "(default: banger's own)")
    args = parser.parse_args()
    if (args.variant or args.rootfs_variant) and not args.rootfs:
        raise SystemExit("--variant/--rootfs-variant need --rootfs")

    start = time.perf_counter()
    status = kvm.probe()
    print(f"kvm probe: {time.perf_counter() - start:.3f}s usable={status.usable} ({status.reason})")
    start = time.perf_counter()
    choice = hypervisor.choose(args.hypervisor)
    print(f"choose: {time.perf_counter() - start:.3f}s -> {choice.backend}/{choice.accel}/{choice.machine}")

    variants = [("base", args.rootfs, args.cmdline)]
    variants += [(name, args.rootfs, f"{args.cmdline} {extra}".strip()) for name, extra in named(args.variant, "--variant")]
    variants += [(name, Path(img), args.cmdline) for name, img in named(args.rootfs_variant, "--rootfs-variant")]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in variants}
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
        dirs = Dirs(cache=Path(tmp) / "cache", state=Path(tmp) / "state", config=Path(tmp) / "config")
        key_dir = (args.state or config.default_dirs().state) / "ssh"
        if args.rootfs and key_dir.is_dir():  # the image authorizes this key, not a fresh one
            shutil.copytree(key_dir, dirs.state / "ssh")
        for i in range(args.repeat):
            for name, rootfs, cmdline in variants:
                if rootfs:
                    start = time.perf_counter()
                    result = boot.boot_and_probe(rootfs, args.kernel, args.initrd,
                                                 boot.BootConfig(hypervisor=args.hypervisor, cmdline=cmdline), dirs,
                                                 vmlinux=args.vmlinux)
                    t = dict(result["seconds"])
                    t["total"] = time.perf_counter() - start
                else:
                    t = kernel_only(args.kernel, choice, dirs.state, cmdline)
                runs[name].append(t)
                load = os.getloadavg()[0]  # TCG timings scale with whatever else the host runs
                print(f"run {i + 1} {name}: " + "  ".join(f"{k}={v:.2f}s" for k, v in t.items()) + f"  (load {load:.2f})",
                      flush=True)
    for name, results in runs.items():
        if len(runs) > 1:
            print(f"{name}:")
        for key in results[0]:
            values = [r[key] for r in results]
            print(f"{key:>14}: median {statistics.median(values):.2f}s  min {min(values):.2f}s  max {max(values):.2f}s")


if __name__ == "__main__":
    main()
