"""Time `banger vm` through the real CLI, on an image that is already built.

    PYTHONPATH=. python3 bench/bench_vm.py [IMAGE] [--rounds N] [--vcpus N] [--memory SIZE]
        [--idle SECONDS] [--list-vms N] [--cache-dir DIR] [--build-boot [REF]] [--json]

IMAGE defaults to debian-bookworm (what `banger demo` builds). Each round: `vm create` (returns
when the guest is SSH-ready), `ssh NAME.vm true` with the system ssh and the ssh config banger
manages, the VMM's and the keeper's RSS after the VM idled --idle seconds, `vm stop` (clean
power-off), `vm start`, `vm rm --force` (of the running VM). Then `vm list` and
`vm list --all --json` with no VM and with --list-vms VMs recorded (made with --no-start: a disk
and a record each, no boot).

For comparison, the build's boot step's own timings (console ready, SSH ready, probe, shutdown):
from the image's boot-result when it was built with boot, or, with --build-boot, from a fresh
`banger build image=REF boot=yes` (REF defaults to the image's ref; the build resolves offline
from the cache when its registry is gone). That boot gets the bench's vCPUs and memory, and a
kernel argument unique to the run so no earlier result is reused; its temporary image name is
removed afterwards (its action records stay in the cache until `banger cache gc`).

Everything runs with a private state dir (XDG_STATE_HOME in a temporary dir, holding a copy of
banger's managed SSH key, which the VMs get on their command line) and BANGER_SSH_CONFIG in it, so neither the
user's VMs nor ~/.ssh/config are touched; the cache is the user's (where the image is) unless
--cache-dir. Every VM the bench made is removed at the end, also on Ctrl-C or SIGTERM. Under TCG
the host's other load moves every boot number by seconds: the load average is printed per round.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from banger.core.config import default_dirs  # noqa: E402

ROUND_STEPS = ("create", "ssh", "stop", "start", "rm")


class Bench:
    def __init__(self, tmp: Path, cache_dir: str | None):
        user = default_dirs(cache_dir)
        self.user_state, self.user_config = user.state, user.config
        self.state_home = tmp / "state"
        self.state = self.state_home / "banger"
        self.ssh_config = tmp / "ssh_config"
        key_dir = user.state / "ssh"
        (self.state / "ssh").mkdir(parents=True)
        for name in ("id_ed25519", "id_ed25519.pub"):  # the user's key: the VMs get it on their command line
            if (key_dir / name).exists():
                shutil.copy2(key_dir / name, self.state / "ssh" / name)
        if (user.state / "kernels").is_dir():  # kernel bundles (a --build-boot build stages one)
            (self.state / "kernels").symlink_to(user.state / "kernels")
        self.env = {**os.environ, "XDG_STATE_HOME": str(self.state_home), "BANGER_SSH_CONFIG": str(self.ssh_config),
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        if cache_dir:
            self.env["BANGER_CACHE_DIR"] = str(Path(cache_dir).resolve())
        self.tmp = tmp

    def banger(self, *args: str, check: bool = True, env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "banger", *args], capture_output=True, text=True,
                              env=env or self.env, cwd=REPO)
        took = time.perf_counter() - start
        if check and proc.returncode != 0:
            raise SystemExit(f"`banger {' '.join(args)}` failed ({proc.returncode}):\n{proc.stderr.strip()[-2000:]}")
        return took, proc

    def ssh(self, name: str, command: str = "true") -> float:
        start = time.perf_counter()
        proc = subprocess.run(["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", f"{name}.vm", command],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
        took = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"`ssh {name}.vm {command}` failed ({proc.returncode}): {proc.stderr.strip()}")
        return took

    def record(self, name: str) -> dict:
        return json.loads((self.state / "vms" / name / "vm.json").read_text())

    def vm_names(self) -> list[str]:
        return sorted(p.name for p in (self.state / "vms").glob("*") if (p / "vm.json").is_file()) \
            if (self.state / "vms").is_dir() else []

    def cleanup(self) -> None:
        names = self.vm_names()
        if names:
            print(f"removing {len(names)} VM(s): {' '.join(names)}", file=sys.stderr, flush=True)
            self.banger("vm", "rm", "--force", *names, check=False)
        left = self.vm_names()
        if left:
            print(f"warning: could not remove {' '.join(left)} (state dir {self.state})", file=sys.stderr)


def rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return None
    return int(stat[stat.rfind(b")") + 2:].split()[1])


def run_round(bench: Bench, image: str, i: int, hardware: list[str], idle: float) -> dict:
    name = f"bench-{i}"
    t: dict = {}
    t["create"], _ = bench.banger("vm", "create", image, "--name", name, *hardware)
    t["ssh"] = bench.ssh(name)
    rec = bench.record(name)
    t["accel"] = f"{rec['backend']}/{rec['accel']}/{rec['machine']}"
    time.sleep(idle)
    vmm = rec["vmm_pid"]
    keeper = parent_of(vmm)
    t["vmm_rss"], t["keeper_rss"] = rss(vmm), rss(keeper) if keeper else None
    t["stop"], _ = bench.banger("vm", "stop", name)
    t["start"], _ = bench.banger("vm", "start", name)
    t["rm"], _ = bench.banger("vm", "rm", "--force", name)
    t["load"] = os.getloadavg()[0]
    return t


def list_timings(bench: Bench, image: str, count: int, repeat: int = 5) -> dict[str, dict[int, list[float]]]:
    out: dict[str, dict[int, list[float]]] = {"vm list": {}, "vm list --all --json": {}}
    for n in (0, count):
        have = len(bench.vm_names())
        for j in range(have, n):
            bench.banger("vm", "create", image, "--name", f"listed-{j}", "--no-start")
        for args in (("vm", "list"), ("vm", "list", "--all", "--json")):
            key = " ".join(args)
            out[key][n] = [bench.banger(*args)[0] for _ in range(repeat)]
        if n:
            shown = json.loads(bench.banger("vm", "list", "--all", "--json")[1].stdout)
            assert len(shown) == n, f"vm list --all shows {len(shown)} VMs, expected {n}"
    return out


def build_boot_seconds(bench: Bench, image: str, ref: str | None, vcpus: int, memory_mib: int) -> dict | None:
    """The boot step's timings: the image's own boot-result, or a fresh `banger build ... boot=yes`."""
    _, shown = bench.banger("image", "show", image, "--json")
    info = json.loads(shown.stdout)
    if ref is None:
        path = info["artifacts"].get("boot-result")
        if not path:
            print(f"(image {image} was built without its boot step; --build-boot boots it once)")
            return None
        return {"source": "the image's build", **_boot_result(Path(path))}
    settings = {}
    with_config = bench.user_config / "config.json"
    if with_config.exists():
        settings = json.loads(with_config.read_text())
    settings["boot"] = {**(settings.get("boot") or {}), "vcpus": vcpus, "memory_mib": memory_mib,
                        "cmdline": f"{(settings.get('boot') or {}).get('cmdline', '')} banger.bench={uuid.uuid4().hex[:8]}".strip()}
    config_home = bench.tmp / "config"
    (config_home / "banger").mkdir(parents=True)
    (config_home / "banger" / "config.json").write_text(json.dumps(settings))
    name = f"bench-boot-{os.getpid()}"
    env = {**bench.env, "XDG_CONFIG_HOME": str(config_home)}
    try:
        took, proc = bench.banger("build", f"image={ref or info['ref']}", f"name={name}", "boot=yes", "--json", env=env)
        built = json.loads(proc.stdout)
        step = next(s for s in built["steps"] if s["step"] == "boot")
        return {"source": f"banger build ({step['status']}, {took:.1f} s in all)",
                **_boot_result(Path(built["artifacts"]["boot-result"]))}
    finally:
        bench.banger("image", "rm", name, check=False, env=env)


def _boot_result(path: Path) -> dict:
    result = json.loads(path.read_text())
    return {"seconds": result["seconds"], "vcpus": result.get("vcpus"), "memory_mib": result.get("memory_mib"),
            "accel": f"{result.get('backend')}/{result.get('accel')}/{result.get('machine')}"}


def spread(values: list[float], unit: str = "s", scale: float = 1.0) -> str:
    values = [v / scale for v in values if v is not None]
    if not values:
        return "-"
    fmt = "{:.2f}" if unit == "s" else "{:.1f}"
    med, lo, hi = (fmt.format(x) for x in (statistics.median(values), min(values), max(values)))
    return f"median {med} {unit}  (min {lo}, max {hi}, n={len(values)})"


def report(rounds: list[dict], lists: dict, boot: dict | None) -> None:
    MiB = 2**20
    print("\nround  " + "  ".join(f"{s:>7}" for s in ROUND_STEPS) + "   vmm RSS  keeper RSS  load  backend")
    for i, t in enumerate(rounds, 1):
        print(f"{i:>5}  " + "  ".join(f"{t[s]:>6.2f}s" for s in ROUND_STEPS)
              + f"  {(t['vmm_rss'] or 0) / MiB:>6.0f}M  {(t['keeper_rss'] or 0) / MiB:>9.1f}M  {t['load']:>4.2f}  {t['accel']}")
    print()
    for s in ROUND_STEPS:
        label = "ssh NAME.vm true" if s == "ssh" else f"vm {s}"
        print(f"{label:>30}: {spread([t[s] for t in rounds])}")
    print(f"{'VMM RSS (idle)':>30}: {spread([t['vmm_rss'] for t in rounds], 'MiB', MiB)}")
    print(f"{'keeper RSS (idle)':>30}: {spread([t['keeper_rss'] for t in rounds], 'MiB', MiB)}")
    for key, by_count in lists.items():
        for n, values in by_count.items():
            print(f"{key + f' ({n} VMs)':>30}: {spread(values)}")
    if boot:
        order = ("console_ready", "ssh_ready", "probe", "shutdown")  # the result file sorts its keys
        seconds = sorted(boot["seconds"].items(), key=lambda kv: (order + (kv[0],)).index(kv[0]))
        parts = "  ".join(f"{k}={v:.2f}s" for k, v in seconds)
        print(f"{'build boot step':>30}: {parts}  [{boot['source']}; {boot['accel']}, {boot['vcpus']} vCPU, "
              f"{boot['memory_mib']} MiB]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", nargs="?", default="debian-bookworm")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vcpus", type=int, default=2)
    parser.add_argument("--memory", default="2G")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds a VM idles before its RSS is read")
    parser.add_argument("--list-vms", type=int, default=10, help="VMs recorded for the `vm list` timings")
    parser.add_argument("--cache-dir", help="the cache holding the image (default: banger's own)")
    parser.add_argument("--build-boot", nargs="?", const="", default=None, metavar="REF",
                        help="time a fresh `banger build image=REF boot=yes` (REF: the image's ref)")
    parser.add_argument("--json", action="store_true", help="also print every number as JSON")
    args = parser.parse_args()
    from banger.vm.disks import parse_size

    memory_mib = parse_size(args.memory, "--memory", "--memory 2G") // 2**20
    hardware = ["--vcpus", str(args.vcpus), "--memory", args.memory]

    def terminate(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, terminate)
    with tempfile.TemporaryDirectory(prefix="bench-vm-") as tmp:
        bench = Bench(Path(tmp), args.cache_dir)
        rounds: list[dict] = []
        try:
            bench.banger("image", "show", args.image)  # fails fast, one line, when it is not built
            print(f"{args.image}: {args.rounds} round(s), {args.vcpus} vCPU, {args.memory}; state {bench.state}",
                  flush=True)
            for i in range(1, args.rounds + 1):
                t = run_round(bench, args.image, i, hardware, args.idle)
                rounds.append(t)
                print(f"round {i}: " + "  ".join(f"{s}={t[s]:.2f}s" for s in ROUND_STEPS)
                      + f"  vmm_rss={(t['vmm_rss'] or 0) >> 20}M keeper_rss={(t['keeper_rss'] or 0) / 2**20:.1f}M"
                      + f"  (load {t['load']:.2f})", flush=True)
            lists = list_timings(bench, args.image, args.list_vms)
            boot = build_boot_seconds(bench, args.image, args.build_boot, args.vcpus, memory_mib)
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            raise SystemExit(130)
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the clean-up
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            bench.cleanup()
        report(rounds, lists, boot)
        if args.json:
            print(json.dumps({"image": args.image, "vcpus": args.vcpus, "memory": args.memory, "rounds": rounds,
                              "list": {k: {str(n): v for n, v in d.items()} for k, d in lists.items()},
                              "build_boot": boot}, indent=1))


if __name__ == "__main__":
    main()
