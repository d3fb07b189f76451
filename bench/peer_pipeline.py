"""The peer pipeline banger is measured against: skopeo copy + umoci unpack + mkfs.ext4 -d.

    python3 bench/peer_pipeline.py [--ref 127.0.0.1:PORT/debian:bookworm] [--runs 3] [--full]

Without --ref it starts the demo registry with the real Debian image (devimage.ensure_demo_image,
cache under cache/bench). Every run is cold in the sense of fresh output directories (nothing
to reuse); --drop-caches also drops the page cache first (root; it slows the other users of
the machine, so it is off by default). bench/bench_build.py imports `measure_peer` so banger
and the peer are measured in the same run.

Peak RSS is per phase and per tool process, measured by GNU time (see `timed`).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PHASES = ("skopeo copy", "umoci unpack", "mkfs.ext4 -d")
# Which banger steps each peer phase corresponds to (for side-by-side tables).
BANGER_EQUIVALENT = {"skopeo copy": "fetch", "umoci unpack": "flatten + ownership",
                     "mkfs.ext4 -d": "ext4"}


@dataclass
class Phase:
    name: str
    seconds: float
    peak_rss_mib: float


def timed(name: str, cmd: list[str]) -> Phase:
    """Run `cmd` to completion; wall time and the peak RSS of its process.

    The RSS comes from GNU time (`time` package), which forks the tool from a ~1 MiB process:
    a child forked (or vforked) from this Python process inherits its ~30 MiB high-water mark,
    so wait4()/RUSAGE_CHILDREN would report Python's RSS for every small tool.
    """
    gnu_time = shutil.which("time") or "/usr/bin/time"
    with tempfile.NamedTemporaryFile("r", prefix="rss-") as rss:
        if os.access(gnu_time, os.X_OK):
            cmd = [gnu_time, "-f", "%M", "-o", rss.name, *cmd]
        started = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.decode(errors="replace").strip().splitlines()
                     if not ln.startswith("Command exited")]
            raise RuntimeError(f"{name} failed (exit {proc.returncode}): {(lines or ['(no output)'])[-1]}")
        text = rss.read().strip()
    kib = int(text.splitlines()[-1]) if text else float("nan")  # nan: GNU time not installed
    return Phase(name, seconds, kib / 1024)


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def run_peer(ref: str, work: Path, size: str = "1G", tag: str = "image") -> list[Phase]:
    """One cold run of the peer pipeline for registry image `ref` into fresh dirs under `work`.

    `ref` is HOST:PORT/REPO:TAG (plain HTTP) or an `oci-layout:DIR:TAG` source.
    """
    for tool in ("skopeo", "umoci", "mkfs.ext4"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found; run: apt-get install skopeo umoci e2fsprogs")
    work.mkdir(parents=True, exist_ok=True)
    oci_dir, bundle, image = work / "oci", work / "bundle", work / "rootfs.ext4"
    for path in (oci_dir, bundle):
        shutil.rmtree(path, ignore_errors=True)
    image.unlink(missing_ok=True)
    source = f"oci:{ref.removeprefix('oci-layout:')}" if ref.startswith("oci-layout:") else f"docker://{ref}"
    phases = [
        timed("skopeo copy", ["skopeo", "copy", "--quiet", "--src-tls-verify=false", source,
                              f"oci:{oci_dir}:{tag}"]),
        timed("umoci unpack", ["umoci", "unpack", *([] if os.geteuid() == 0 else ["--rootless"]),
                               "--image", f"{oci_dir}:{tag}", str(bundle)]),
        timed("mkfs.ext4 -d", ["mkfs.ext4", "-q", "-F", "-d", str(bundle / "rootfs"), str(image), size]),
    ]
    return phases


def measure_peer(ref: str, work: Path | None = None, runs: int = 1, size: str = "1G",
                 drop: bool = False, keep: bool = False) -> list[list[Phase]]:
    """`runs` cold runs of the peer pipeline; returns one list of phases per run."""
    own_work = work is None
    work = Path(tempfile.mkdtemp(prefix="peer-", dir=os.environ.get("BANGER_BENCH_TMP"))) if own_work else work
    results = []
    try:
        for i in range(runs):
            if drop:
                drop_caches()
            results.append(run_peer(ref, work / f"run{i}", size))
            if not keep:
                shutil.rmtree(work / f"run{i}", ignore_errors=True)
    finally:
        if own_work and not keep:
            shutil.rmtree(work, ignore_errors=True)
    return results


def summarize(runs: list[list[Phase]]) -> list[Phase]:
    """Median seconds and max peak RSS per phase over the runs, plus a total row."""
    out = []
    for i, name in enumerate(r.name for r in runs[0]):
        out.append(Phase(name, statistics.median(r[i].seconds for r in runs),
                         max(r[i].peak_rss_mib for r in runs)))
    out.append(Phase("total", statistics.median(sum(p.seconds for p in r) for r in runs),
                     max(p.peak_rss_mib for p in out)))
    return out


def format_table(runs: list[list[Phase]]) -> str:
    rows = [f"{'phase':<16}{'banger step':<22}" + "".join(f"{f'run {i + 1}':>9}" for i in range(len(runs)))
            + f"{'median':>9}{'peak RSS':>11}"]
    for i, phase in enumerate(summarize(runs)):
        per_run = ([r[i].seconds for r in runs] if phase.name != "total"
                   else [sum(p.seconds for p in r) for r in runs])
        rows.append(f"{phase.name:<16}{BANGER_EQUIVALENT.get(phase.name, ''):<22}"
                    + "".join(f"{s:>8.2f}s" for s in per_run)
                    + f"{phase.seconds:>8.2f}s{phase.peak_rss_mib:>8.0f} MiB")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", help="registry image HOST:PORT/REPO:TAG or oci-layout:DIR:TAG "
                                  "(default: the demo Debian image)")
    ap.add_argument("--cache-dir", type=Path, default=REPO / "cache" / "bench",
                    help="demo image cache (debootstrap output, registry storage)")
    ap.add_argument("--full", action="store_true",
                    help="demo image with docs, manual pages and translations (~9.5k paths, W1-sized)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", default="1G", help="ext4 image size given to mkfs.ext4")
    ap.add_argument("--drop-caches", action="store_true", help="drop the page cache before each run (root)")
    ap.add_argument("--keep", action="store_true", help="keep the output dirs (printed)")
    args = ap.parse_args(argv)

    registry = None
    ref = args.ref
    if ref is None:
        from banger.devtools import debian_image as devimage

        registry, ref = devimage.ensure_demo_image(args.cache_dir, slim=not args.full)
    try:
        work = Path(tempfile.mkdtemp(prefix="peer-")) if args.keep else None
        runs = measure_peer(ref, work, args.runs, args.size, args.drop_caches, args.keep)
    finally:
        if registry is not None:
            registry.stop()
    print(f"peer pipeline on {ref} ({args.runs} cold run(s), fresh dirs"
          f"{', page cache dropped' if args.drop_caches else ''}):")
    print(format_table(runs))
    if work is not None:
        print(f"outputs kept under {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
