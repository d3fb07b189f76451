"""The artifact cache through an OCI registry, in one run, against a local docker-registry.

    python3 bench/bench_remote_cache.py image=REF kernel=K [more build words]

e.g. image=oci-layout:cache/test-fixtures/debian-oci:bookworm kernel=debian-cloud-amd64 (W1-like).
boot=no is added. The build uses your state dir (kernels); caches are fresh temporary dirs. Measures:
  local       `banger build` into an empty cache C (the cold local build to compare with)
  cold        `banger build --cache-to R` into an empty cache A (build + push)
  push        the push alone (`cache push` from A into a second, empty repository: its blobs
              are mounted from the first one, which A pushed to before)
  push again  the same push: actions and bytes sent (should be 0 bytes)
  warm        `banger build --cache-from R` into an empty cache B: wall time, steps ran
  bytes       what the registry stores vs the cached artifacts' apparent and allocated sizes
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from banger.devtools import registry as devregistry  # noqa: E402


def banger(env: dict, *args: str) -> tuple[float, dict, str]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "banger", *args, "--json"], capture_output=True,
                          text=True, env={**os.environ, **env}, cwd=REPO)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"banger {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
    return wall, json.loads(proc.stdout), proc.stderr


def sizes(root: Path) -> tuple[int, int]:
    """(apparent, allocated) bytes of the files under root."""
    apparent = allocated = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated


def mb(n: int) -> str:
    return f"{n / 1e6:8.1f} MB"


def main() -> None:
    words = [w for w in sys.argv[1:]] + ["boot=no", "name=bench-remote"]
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        tmp_path = Path(tmp)
        reg = devregistry.start(tmp_path / "registry")
        try:
            target = f"{reg.host}/bench/cache"
            env_a = {"BANGER_CACHE_DIR": str(tmp_path / "a"), "BANGER_TREES_DIR": "cache"}
            env_b = {"BANGER_CACHE_DIR": str(tmp_path / "b"), "BANGER_TREES_DIR": "cache"}
            local, _, _ = banger({"BANGER_CACHE_DIR": str(tmp_path / "c"), "BANGER_TREES_DIR": "cache"},
                                 "build", *words)
            cold, built, err = banger(env_a, "build", *words, "--cache-to", target)
            pushed_line = next((line for line in err.splitlines() if line.startswith("pushed ")), "?")
            push_wall, stats, _ = banger(env_a, "cache", "push", f"{reg.host}/bench/second", "--image", "bench-remote")
            again_wall, again, _ = banger(env_a, "cache", "push", target, "--image", "bench-remote")
            warm, rebuilt, _ = banger(env_b, "build", *words, "--cache-from", target)
            ran = [s["step"] for s in rebuilt["steps"] if s["status"] == "ran"]
            registry_bytes = sizes(tmp_path / "registry" / "data" / "docker" / "registry" / "v2" / "repositories"
                                   / "bench" / "cache")  # links only; the blobs are shared:
            blob_bytes = sizes(tmp_path / "registry" / "data" / "docker" / "registry" / "v2" / "blobs")
            a_blobs = sizes(tmp_path / "a" / "blobs")
            a_trees = sizes(tmp_path / "a" / "trees")
            b_blobs = sizes(tmp_path / "b" / "blobs")
        finally:
            reg.stop()
    print(f"build words: {' '.join(words)}")
    print(f"cold local build (C)      {local:7.1f} s")
    print(f"cold build + push (A)     {cold:7.1f} s   ({pushed_line})")
    print(f"push alone, new repo      {push_wall:7.1f} s   {stats['actions_sent']} actions, "
          f"{stats['blobs_sent']} blobs, {mb(stats['bytes_sent'])} sent, "
          f"{stats.get('blobs_mounted', 0)} blobs mounted from the first repo")
    print(f"push again, same repo     {again_wall:7.1f} s   {again['actions_sent']} actions, "
          f"{again['blobs_sent']} blobs, {again['bytes_sent']} bytes sent")
    print(f"warm build from R (B)     {warm:7.1f} s   steps ran: {', '.join(ran) or 'none'}")
    print(f"registry blobs (2 repos, shared)  {mb(blob_bytes[0])}   (repo links {registry_bytes[0]} B)")
    print(f"cache A blobs  apparent {mb(a_blobs[0])}  allocated {mb(a_blobs[1])};  trees {mb(a_trees[0])}")
    print(f"cache B blobs  apparent {mb(b_blobs[0])}  allocated {mb(b_blobs[1])}")


if __name__ == "__main__":
    main()
