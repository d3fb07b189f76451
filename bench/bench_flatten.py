"""Benchmark flatten against `umoci unpack` (and GNU tar) on the same gzip layer, in the same run.

    sudo python3 bench/bench_flatten.py ROOTFS [--work DIR] [--runs N] [--bomb-mib N]

ROOTFS is a root filesystem directory (e.g. a debootstrapped Debian). It is packed once with GNU
tar (--xattrs, numeric owners) into an OCI layout with one gzip layer (cached in WORK). Each tool
then runs as a child process; we report its wall time, CPU and peak RSS (wait4 rusage, which
covers the child and the children it reaped, e.g. flatten's decoder). `--bomb-mib` also flattens
a layer holding one file of N MiB of zeros (a ~1000:1 gzip ratio): peak RSS must not follow N.
umoci needs root to keep owners and device nodes, so run the benchmark as root.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from banger.devtools.oci_writer import MT_LAYER, Layer, write_image, write_index  # noqa: E402

FLATTEN = """
import sys
from pathlib import Path
from banger.steps.flatten import flatten_layers
blob, media_type, diff_id, out = sys.argv[1:5]
print(flatten_layers([(Path(blob), media_type, diff_id)], Path(out) / "rootfs", Path(out) / "fsmeta.jsonl"))
"""


def measure(name: str, argv: list[str], **kw) -> dict:
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.stdout.close()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}): {err.strip()[-500:]}")
    return {"tool": name, "wall_s": round(wall, 2), "user_s": round(usage.ru_utime, 2),
            "sys_s": round(usage.ru_stime, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "output": out.strip()[-200:]}


def pack(rootfs: Path, work: Path) -> tuple[Path, Path, str]:
    """The layout and its layer blob (built once per WORK dir) and the layer's diff_id."""
    layout, tar = work / "layout", work / "layer.tar"
    if not (layout / "index.json").exists():
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "--xattrs", "--xattrs-include=*",
                        "--sort=name", "-cf", str(tar), "."], check=True)
        write_index(layout, "bench", [write_image(layout, [Layer(tar, "gzip")])])
        tar.unlink()
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"].split(":")[1]).read_text())
    config = json.loads((layout / "blobs/sha256" / manifest["config"]["digest"].split(":")[1]).read_text())
    blob = layout / "blobs/sha256" / manifest["layers"][0]["digest"].split(":")[1]
    return layout, blob, config["rootfs"]["diff_ids"][0]


def bomb(work: Path, mib: int) -> tuple[Path, str]:
    """A gzip layer holding one file of `mib` MiB of zeros, streamed (never in memory)."""
    path = work / f"bomb-{mib}.tar.gz"
    diff = work / f"bomb-{mib}.diffid"
    if not path.exists():
        h = hashlib.sha256()

        class Tee:
            def __init__(self, f):
                self.f = f

            def write(self, data):
                h.update(data)
                return self.f.write(data)

        with gzip.open(path, "wb", compresslevel=1) as gz:
            tee = Tee(gz)
            info = tarfile.TarInfo("zeros")
            info.size = mib << 20
            zeros = bytes(1 << 20)
            tee.write(info.tobuf(tarfile.GNU_FORMAT))
            for _ in range(mib):
                tee.write(zeros)
            tee.write(bytes(1024))  # end-of-archive blocks
        diff.write_text("sha256:" + h.hexdigest())
    return path, diff.read_text()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rootfs", type=Path)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "banger-bench-flatten")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--bomb-mib", type=int, default=0)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    layout, blob, diff_id = pack(args.rootfs, args.work)
    print(f"layer: {blob.stat().st_size / 1e6:.1f} MB gzip, diff_id {diff_id[:19]}...", file=sys.stderr)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    results = []
    for run in range(args.runs):
        for name in ("banger flatten", "umoci unpack", "gnu tar -xzf"):
            out = args.work / "out"
            shutil.rmtree(out, ignore_errors=True)
            if name == "banger flatten":
                out.mkdir()
                argv = [sys.executable, "-c", FLATTEN, str(blob), MT_LAYER["gzip"], diff_id, str(out)]
            elif name == "umoci unpack":
                if shutil.which("umoci") is None:
                    continue
                argv = ["umoci", "unpack", "--image", f"{layout}:bench", str(out)]
            else:
                (out / "rootfs").mkdir(parents=True)
                argv = ["tar", "-C", str(out / "rootfs"), "--numeric-owner", "-xzf", str(blob)]
            subprocess.run(["sync"], check=True)
            results.append({"run": run, **measure(name, argv, env=env)})
            print(json.dumps(results[-1]), file=sys.stderr)
    if args.bomb_mib:
        path, bomb_diff = bomb(args.work, args.bomb_mib)
        out = args.work / "out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        argv = [sys.executable, "-c", FLATTEN, str(path), MT_LAYER["gzip"], bomb_diff, str(out)]
        results.append({"run": f"{args.bomb_mib} MiB zeros", **measure("banger flatten", argv, env=env)})
        print(json.dumps(results[-1]), file=sys.stderr)
    shutil.rmtree(args.work / "out", ignore_errors=True)
    print(f"{'tool':<16} {'run':>14} {'wall s':>7} {'user s':>7} {'sys s':>6} {'peak RSS MiB':>13}")
    for r in results:
        print(f"{r['tool']:<16} {r['run']!s:>14} {r['wall_s']:>7} {r['user_s']:>7} {r['sys_s']:>6} {r['peak_rss_mib']:>13}")


if __name__ == "__main__":
    main()
