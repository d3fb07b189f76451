"""The local cache's size per image, and a template edit's rebuild, against an earlier commit.

    python3 bench/bench_local_cache.py image=REF kernel=K [--baseline REV] [--edits N]

e.g. image=oci-layout:cache/test-fixtures/debian-oci:bookworm kernel=debian-cloud-amd64 (W1).
boot=no is added. REV (default HEAD~1) is taken from this checkout's git history (`git archive`)
and run as it was, like tests/test_cache_compat.py. Each version builds into its own fresh cache
(your state dir: kernels, the managed key); then, alternating between the two versions, N
template edits (a comment appended to a copy of templates/agent.sh.j2) are rebuilt. Measures:
  allocated   bytes on disk per artifact kind (the cached disk images, the final rootfs, the rest)
              and their ratio to the final rootfs's allocated bytes
  edit        wall time of `banger build` after a template edit (inject and stage-kernel run),
              median and each run, interleaved so both versions see the same machine

Measured on W1 (Debian bookworm, debian-cloud-amd64 with its modules injected), a 2-core host
under load (~5), against 01b673a, 8 edits each:
                              before            after (intermediates dropped)
  final rootfs (allocated)    248.1 MB  1.00x   248.1 MB  1.00x
  other disk images           493.5 MB  1.99x   153.3 MB  0.62x   (ownership's image only)
  layers, kernel files        116.6 MB  0.47x   116.6 MB  0.47x
  disk images                 741.6 MB  2.99x   401.4 MB  1.62x
  the whole cache             858.2 MB  3.46x   518.0 MB  2.09x
  template edit -> image      2.73 s median     2.82 s median (wall, CLI start included; noise)
Keeping ownership's image zstd-compressed instead would bring the whole cache to ~1.7x (zstd -1:
49 MB) but cost every template edit ~0.35 s (decompressing 0.43 s vs a 0.09 s sparse copy).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def export(rev: str, dest: Path) -> Path:
    archive = subprocess.run(["git", "archive", "--format=tar", rev, "banger", "templates"], cwd=REPO,
                             capture_output=True, check=True).stdout
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def build(code: Path, env: dict, words: list[str]) -> tuple[float, dict]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "banger", "build", *words, "--json"], cwd=code,
                          capture_output=True, text=True, env={**os.environ, **env, "PYTHONPATH": str(code)})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"build with {code.name} failed: {proc.stderr.strip()[-2000:]}")
    return wall, json.loads(proc.stdout)


def allocated(cache: Path, built: dict) -> dict[str, int]:
    """Allocated bytes under the cache's blobs/ and trees/ by kind."""
    rootfs = Path(built["artifacts"]["rootfs"]).name
    out = {"final rootfs": 0, "other disk images": 0, "layers, kernel, records' blobs": 0, "trees": 0}
    for top in ("blobs", "trees"):
        for dirpath, _, files in os.walk(cache / top):
            for name in files:
                st = os.lstat(os.path.join(dirpath, name))
                size = st.st_blocks * 512
                if top == "trees":
                    out["trees"] += size
                elif name == rootfs:
                    out["final rootfs"] += size
                elif st.st_size >= 256 << 20 and _is_ext4(Path(dirpath) / name):
                    out["other disk images"] += size
                else:
                    out["layers, kernel, records' blobs"] += size
    return out


def _is_ext4(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(1024 + 0x38)
        return f.read(2) == b"\x53\xef"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("words", nargs="+")
    parser.add_argument("--baseline", default="HEAD~1")
    parser.add_argument("--edits", type=int, default=5)
    args = parser.parse_args()
    words = [*args.words, "boot=no", "name=bench-local"]
    with tempfile.TemporaryDirectory(prefix="bench-local-", dir=REPO / "cache") as tmp:
        tmp_path = Path(tmp)
        versions = {f"baseline ({args.baseline})": export(args.baseline, tmp_path / "baseline"), "this tree": REPO}
        templates = tmp_path / "templates"
        shutil.copytree(REPO / "templates", templates)
        envs = {label: {"BANGER_CACHE_DIR": str(tmp_path / f"cache-{i}"), "BANGER_TEMPLATES_DIR": str(templates)}
                for i, label in enumerate(versions)}
        sizes, edits = {}, {label: [] for label in versions}
        for label, code in versions.items():
            _, built = build(code, envs[label], words)
            sizes[label] = allocated(Path(envs[label]["BANGER_CACHE_DIR"]), built)
        agent = templates / "agent.sh.j2"
        for i in range(args.edits):
            for label, code in (versions.items() if i % 2 == 0 else reversed(versions.items())):
                with open(agent, "a") as f:
                    f.write(f"# edit {i} {label}\n")
                wall, built = build(code, envs[label], words)
                ran = {s["step"] for s in built["steps"] if s["status"] == "ran"}
                assert ran == {"inject", "stage-kernel"}, ran
                edits[label].append(wall)
    print(f"build words: {' '.join(words)}")
    for label in versions:
        s = sizes[label]
        total, final = sum(s.values()), s["final rootfs"]
        print(f"{label}:")
        for kind, n in s.items():
            print(f"  {kind:<32} {n / 1e6:8.1f} MB  {n / final:5.2f}x the final rootfs")
        images = final + s["other disk images"]
        print(f"  {'disk images':<32} {images / 1e6:8.1f} MB  {images / final:5.2f}x")
        print(f"  {'the whole cache':<32} {total / 1e6:8.1f} MB  {total / final:5.2f}x")
        runs = edits[label]
        print(f"  template edit -> image: median {statistics.median(runs):.2f} s "
              f"({', '.join(f'{r:.2f}' for r in runs)})")


if __name__ == "__main__":
    main()
