"""Time the boot step's parts: the KVM probe, the backend choice and a VM boot, phase by phase.

    PYTHONPATH=. python3 bench/bench_boot.py KERNEL [--rootfs IMG --initrd INITRD] [--repeat N]

Without --rootfs the kernel boots with no disk and panics (a pure kernel-start measure: VMM
start -> "Linux version" -> "Run /init"-or-panic -> VMM exit). With a staged rootfs (the
stage-kernel step's outputs) it runs the whole boot step: console readiness, SSH login, probe,
shutdown, as `boot.boot_and_probe` reports them. State (run dirs, key) goes to a temporary dir.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from banger import boot, hypervisor, kvm, vm as vmmod
from banger.config import Dirs


def kernel_only(kernel: Path, choice: hypervisor.Choice, state: Path) -> dict[str, float]:
    t: dict[str, float] = {}
    start = time.perf_counter()
    vm = vmmod.create(choice, vmmod.VMConfig(kernel=kernel, run_dir=vmmod.new_run_dir(state), cmdline="panic=-1"))
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kernel", type=Path)
    parser.add_argument("--rootfs", type=Path)
    parser.add_argument("--initrd", type=Path)
    parser.add_argument("--hypervisor", default="auto")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    start = time.perf_counter()
    status = kvm.probe()
    print(f"kvm probe: {time.perf_counter() - start:.3f}s usable={status.usable} ({status.reason})")
    start = time.perf_counter()
    choice = hypervisor.choose(args.hypervisor)
    print(f"choose: {time.perf_counter() - start:.3f}s -> {choice.backend}/{choice.accel}/{choice.machine}")

    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
        dirs = Dirs(cache=Path(tmp) / "cache", state=Path(tmp) / "state", config=Path(tmp) / "config")
        for i in range(args.repeat):
            if args.rootfs:
                result = boot.boot_and_probe(args.rootfs, args.kernel, args.initrd,
                                             boot.BootConfig(hypervisor=args.hypervisor), dirs)
                t = dict(result["seconds"])
            else:
                t = kernel_only(args.kernel, choice, dirs.state)
            runs.append(t)
            load = os.getloadavg()[0]  # TCG timings scale with whatever else the host runs
            print(f"run {i + 1}: " + "  ".join(f"{k}={v:.2f}s" for k, v in t.items()) + f"  (load {load:.2f})")
    for key in runs[0]:
        values = [r[key] for r in runs]
        print(f"{key:>14}: median {statistics.median(values):.2f}s  min {min(values):.2f}s  max {max(values):.2f}s")


if __name__ == "__main__":
    main()
