"""Pull speed and memory: banger's fetch step beside `skopeo copy docker://... oci:DIR`.

    python3 bench/bench_fetch.py [--mib 128] [--runs 3] [--ref HOST/REPO:TAG]

Without --ref it starts a local docker-registry and pushes a one-layer image of MIB random
(incompressible) bytes, gzip-wrapped, made once under cache/bench/. Each run pulls into a fresh
cache / output directory. Wall time and peak RSS per process (GNU time, as bench/peer_pipeline.py).
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from banger.devtools import registry as devregistry, oci_writer  # noqa: E402

BANGER_PULL = """
import sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from banger.core.store import Store
from banger.engine.spec import BuildSpec
from banger.engine.tasks import Build
from banger.steps import fetch
build = Build(Store(Path(sys.argv[1])), log=lambda m: None)
build.context["config"] = {{}}
image = fetch.resolve(build, BuildSpec(image=sys.argv[2]))
source = build.context["image_source"]
for layer in image.layers:
    source.fetch_blob(build.store, layer)
"""


def timed(cmd: list[str]) -> tuple[float, float]:
    gnu_time = shutil.which("time") or "/usr/bin/time"
    with tempfile.NamedTemporaryFile("r", prefix="rss-") as rss:
        if os.access(gnu_time, os.X_OK):
            cmd = [gnu_time, "-f", "%M", "-o", rss.name, *cmd]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        text = rss.read().strip().splitlines()
    return seconds, (float(text[-1]) / 1024 if text else float("nan"))


def make_layout(cache: Path, mib: int) -> Path:
    layout = cache / f"fetch-{mib}m"
    if (layout / "index.json").exists():
        return layout
    tmp = cache / f"fetch-{mib}m.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    payload = tmp.parent / "payload.bin"
    with open(payload, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    tar = tmp.parent / "layer.tar"
    subprocess.run(["tar", "-C", str(tmp.parent), "-cf", str(tar), payload.name], check=True)
    desc = oci_writer.write_image(tmp, [oci_writer.Layer(tar, "gzip")])
    oci_writer.write_index(tmp, "bench", [desc])
    payload.unlink()
    tar.unlink()
    tmp.rename(layout)
    return layout


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ref")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-fetch-"))
    registry = None
    try:
        ref = args.ref
        if ref is None:
            layout = make_layout(REPO / "cache" / "bench", args.mib)
            registry = devregistry.start(work / "registry")
            ref = f"{registry.host}/bench/blob:{args.mib}m"
            subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:bench",
                            f"docker://{ref}"], check=True)
        script = work / "pull.py"
        script.write_text(BANGER_PULL.format(repo=str(REPO)))
        rows: dict[str, list[tuple[float, float]]] = {"banger fetch": [], "skopeo copy": []}
        for run in range(args.runs):
            rows["banger fetch"].append(timed([sys.executable, str(script), str(work / f"cache{run}"), ref]))
            rows["skopeo copy"].append(timed(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                                              f"docker://{ref}", f"oci:{work / f'oci{run}'}:x"]))
            shutil.rmtree(work / f"cache{run}")
            shutil.rmtree(work / f"oci{run}")
        print(f"image {ref}, {args.runs} runs (median)")
        for name, samples in rows.items():
            secs = statistics.median(s for s, _ in samples)
            rss = statistics.median(r for _, r in samples)
            print(f"  {name:<14} {secs:7.2f} s   peak RSS {rss:6.1f} MiB")
        ratio = statistics.median(s for s, _ in rows["banger fetch"]) / statistics.median(s for s, _ in rows["skopeo copy"])
        print(f"  banger/skopeo  {ratio:.2f}x")
    finally:
        if registry is not None:
            registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
