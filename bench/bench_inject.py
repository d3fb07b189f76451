"""Time the inject step's parts on a real image: the template-edit rebuild path.

    PYTHONPATH=. python3 bench/bench_inject.py IMAGE.ext4 [--repeat N]

IMAGE is an ext4 image such as the ownership step's output for W1 (Debian bookworm). Nothing is
written next to it: the copy, probe, debugfs batch and ingest happen in a temporary store.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from banger.core import fsutil
from banger.rootfs import e2fs, guest_assets as ga
from banger.steps import inject
from banger.core.store import Store


def once(image: Path, work: Path) -> dict[str, float]:
    store = Store(work / "cache")
    t: dict[str, float] = {}
    start = time.perf_counter()
    ga.assets_digest(ga.NetworkSettings())
    t["digest"] = time.perf_counter() - start
    with store.staging() as stage:
        copy = stage / "rootfs.ext4"
        mark = time.perf_counter()
        fsutil.copy_sparse(image, copy)
        t["copy_sparse"] = time.perf_counter() - mark
        mark = time.perf_counter()
        scratch = stage / "assets"
        scratch.mkdir()
        layout = inject.probe_layout(copy, scratch)
        assets = ga.render(ga.NetworkSettings(), layout)
        t["probe+render"] = time.perf_counter() - mark
        mark = time.perf_counter()
        inject.inject_agents(copy, assets, scratch)
        t["debugfs batch"] = time.perf_counter() - mark
        mark = time.perf_counter()
        e2fs.fsck(copy)
        t["e2fsck -fn"] = time.perf_counter() - mark
        mark = time.perf_counter()
        digest = store.ingest_file(copy)
        t["ingest (blake3)"] = time.perf_counter() - mark
    t["total"] = time.perf_counter() - start
    store.remove(digest)
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-inject-", dir=Path.cwd() / "cache") as tmp:
        for _ in range(args.repeat):
            runs.append(once(args.image, Path(tmp)))
    print(f"inject on {args.image} ({args.image.stat().st_size >> 20} MiB apparent, "
          f"{args.image.stat().st_blocks * 512 >> 20} MiB allocated), median of {args.repeat}:")
    for part in runs[0]:
        print(f"  {part:<28} {statistics.median(r[part] for r in runs):7.3f} s")


if __name__ == "__main__":
    main()
