"""`banger vm create` from a snapshot vs a cold boot, interleaved in one run, through the real CLI.

    PYTHONPATH=. python3 bench/bench_snapshot.py [IMAGE] [--rounds N] [--vcpus N] [--memory SIZE]
        [--idle SECONDS] [--cache-dir DIR] [--json]

IMAGE defaults to debian-bookworm (what `banger demo` builds). First one `vm create` that makes
the image's snapshot for this shape when the cache has none (its time is reported apart: the
one-time cost). Then per round, in alternating order: `vm create` (restored; returns when the
guest answers SSH with the pinned key) and `vm create --cold` (booted), each followed by the
user's `ssh NAME.vm true` and, after --idle seconds, the VMM's RSS; the restore's own phases
(QEMU loaded the state, the guest announced itself, SSH login) from the VM's record. Also the
snapshot's size on disk (memory file compressed and raw, the frozen disk layer). Same private
state dir and cleanup as bench_vm.py.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_vm import Bench, rss  # noqa: E402


def snapshot_info(bench: Bench, key: str) -> dict:
    cache = Path(bench.env.get("BANGER_CACHE_DIR") or Path.home() / ".cache" / "banger")
    record = json.loads((cache / "actions" / key[:2] / f"{key}.json").read_text())
    return {k: record["info"].get(k) for k in ("memory_bytes", "memory_stored_bytes", "disk_bytes", "seconds")}


def one(bench: Bench, image: str, name: str, hardware: list[str], cold: bool, idle: float) -> dict:
    took, proc = bench.banger("vm", "create", image, "--name", name, *hardware, *(["--cold"] if cold else []))
    rec = bench.record(name)
    restored = bool(rec.get("snapshot"))
    if restored == cold:
        raise SystemExit(f"{name}: expected a {'cold boot' if cold else 'restore'}:\n{proc.stderr}")
    out = {"create": took, "ssh": bench.ssh(name), "load": os.getloadavg()[0],
           "phases": rec.get("extra", {}).get("restore_seconds")}
    time.sleep(idle)
    out["vmm_rss"] = rss(rec["vmm_pid"])
    bench.banger("vm", "rm", "--force", name)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("image", nargs="?", default="debian-bookworm")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vcpus", default="2")
    ap.add_argument("--memory", default="2G")
    ap.add_argument("--idle", type=float, default=5.0)
    ap.add_argument("--cache-dir")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    hardware = ["--vcpus", args.vcpus, "--memory", args.memory]
    with tempfile.TemporaryDirectory(prefix="banger-bench-snap-") as tmp:
        bench = Bench(Path(tmp), args.cache_dir)
        try:
            took, proc = bench.banger("vm", "create", args.image, "--name", "warm", *hardware)
            first = {"create": took, "made_snapshot": "snapshot: booting" in proc.stderr}
            key = bench.record("warm")["snapshot"]
            bench.banger("vm", "rm", "--force", "warm")
            rows = {"restore": [], "cold": []}
            for i in range(args.rounds):
                order = ("restore", "cold") if i % 2 == 0 else ("cold", "restore")
                for kind in order:
                    row = one(bench, args.image, f"{kind}-{i}", hardware, kind == "cold", args.idle)
                    rows[kind].append(row)
                    print(f"round {i} {kind:<7} create {row['create']:6.2f} s  ssh {row['ssh']:5.2f} s  "
                          f"rss {(row['vmm_rss'] or 0) / 2**20:6.0f} MiB  load {row['load']:.1f}"
                          + (f"  phases {row['phases']}" if row["phases"] else ""), file=sys.stderr, flush=True)
        finally:
            bench.cleanup()
    summary = {"first_create": first, "snapshot": snapshot_info(bench, key) if key else None}
    for kind, got in rows.items():
        creates = [r["create"] for r in got]
        summary[kind] = {"create_median": round(statistics.median(creates), 2),
                         "create_range": [round(min(creates), 2), round(max(creates), 2)],
                         "ssh_median": round(statistics.median(r["ssh"] for r in got), 2),
                         "vmm_rss_mib_median": round(statistics.median((r["vmm_rss"] or 0) for r in got) / 2**20)}
    summary["restore/cold"] = round(summary["restore"]["create_median"] / summary["cold"]["create_median"], 2)
    print(json.dumps(summary, indent=1) if args.json else "\n".join(f"{k}: {v}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
