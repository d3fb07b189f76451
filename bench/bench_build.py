"""banger build against the peer pipeline, in one run, on the real Debian image from a local registry.

    python3 bench/bench_build.py [--slim] [--runs 3] [--boot]

Measures (each banger run in a fresh cache unless said otherwise):
  cold       `banger build boot=no`: registry -> finished, injected, kernel-staged ext4
  peer       skopeo copy + umoci unpack + mkfs.ext4 -d (bench/peer_pipeline.py)
  no-op      the same build again, fully cached (wall time of the whole command), by tag and by digest
  template   one template edited: inject and stage-kernel rerun
  boot       (--boot) the boot step: cold boot to SSH-ready and probe, under whatever backend runs here
Default image: the full (W1-like, ~9.5k paths) Debian bookworm; --slim uses the demo's image.
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
sys.path.insert(0, str(REPO))

from banger.devtools import debian_image as devimage  # noqa: E402
from bench.peer_pipeline import format_table, measure_peer, summarize  # noqa: E402


def banger(env: dict, *args: str) -> tuple[float, dict]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "banger", *args, "--json"], capture_output=True,
                          text=True, env={**os.environ, **env}, cwd=REPO)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"banger {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
    return wall, json.loads(proc.stdout)


def step_seconds(result: dict, *names: str) -> float:
    return sum(s["seconds"] for s in result["steps"]
               if s["step"] in names or (s["step"].startswith("fetch:") and "fetch" in names))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slim", action="store_true", help="the demo's slim image instead of the W1-like one")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--boot", action="store_true", help="also measure a cold boot")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-build-", dir=REPO / "cache"))
    registry, ref = devimage.ensure_demo_image(REPO / "cache" / "bench", slim=args.slim)
    try:
        state = work / "state"
        kernels = state / "banger" / "kernels"
        kernels.parent.mkdir(parents=True)
        real_state = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "banger" / "kernels"
        if not real_state.is_dir() or not any(real_state.iterdir()):
            subprocess.run([sys.executable, "-m", "banger", "kernel", "pull", "debian:cloud-amd64"], check=True, cwd=REPO)
        kernels.symlink_to(real_state)

        colds, noops_tag, noops_digest, edits, peer = [], [], [], [], []
        for i in range(args.runs):  # banger and the peer interleaved: the host's load drifts
            peer += measure_peer(ref, runs=1)
            env = {"BANGER_CACHE_DIR": str(work / f"cache{i}"), "XDG_STATE_HOME": str(state),
                   "XDG_CONFIG_HOME": str(work / "config")}
            wall, cold = banger(env, "build", f"image={ref}", "boot=no")
            colds.append((wall, cold))
            noops_tag.append(banger(env, "build", f"image={ref}", "boot=no")[0])
            pinned = f"{ref.rsplit(':', 1)[0]}@{cold['digest']}"
            noops_digest.append(banger(env, "build", f"image={pinned}", "boot=no")[0])
            templates = work / f"templates{i}"
            shutil.copytree(REPO / "templates", templates)
            agent = templates / "agent.sh.j2"
            agent.write_text(agent.read_text() + f"\n# bench edit {i}\n")
            wall, edited = banger({**env, "BANGER_TEMPLATES_DIR": str(templates)}, "build", f"image={ref}", "boot=no")
            edits.append((wall, edited))
            shutil.rmtree(work / f"cache{i}")

        med = statistics.median
        registry_to_ext4 = med(step_seconds(c, "fetch", "flatten", "ext4", "ownership") for _, c in colds)
        peer_total = summarize(peer)[-1].seconds
        print(f"image {ref} ({'slim' if args.slim else 'full, W1-like'}), {args.runs} runs, medians\n")
        print("banger, cold, per step:")
        for name in ["fetch", "flatten", "ext4", "ownership", "inject", "stage-kernel"]:
            print(f"  {name:<14}{med(step_seconds(c, name) for _, c in colds):7.2f} s")
        print(f"  {'command wall':<14}{med(w for w, _ in colds):7.2f} s\n")
        print("peer pipeline:")
        print(format_table(peer))
        print(f"\nregistry -> owned ext4: banger {registry_to_ext4:.2f} s vs peer {peer_total:.2f} s "
              f"= {registry_to_ext4 / peer_total:.2f}x (medians); per run: " + ", ".join(
                  f"{step_seconds(c, 'fetch', 'flatten', 'ext4', 'ownership') / sum(ph.seconds for ph in p):.2f}x"
                  for (_, c), p in zip(colds, peer)))
        print(f"no-op rebuild (whole command): by tag {med(noops_tag):.3f} s, by digest {med(noops_digest):.3f} s")
        edit_steps = med(step_seconds(e, "inject", "stage-kernel") for _, e in edits)
        cold_total = med(step_seconds(c, "fetch", "flatten", "ext4", "ownership", "inject", "stage-kernel") for _, c in colds)
        edit_inject = med(step_seconds(e, "inject") for _, e in edits)
        print(f"template edit: inject (the new ext4) {edit_inject:.2f} s = {edit_inject / cold_total:.0%} of the cold "
              f"steps; with stage-kernel {edit_steps:.2f} s, command wall {med(w for w, _ in edits):.2f} s "
              f"({edit_steps / cold_total:.0%})")
        if args.boot:
            env = {"BANGER_CACHE_DIR": str(work / "cache-boot"), "XDG_STATE_HOME": str(state),
                   "XDG_CONFIG_HOME": str(work / "config")}
            _, booted = banger(env, "build", f"image={ref}")
            result = json.loads(Path(booted["artifacts"]["boot-result"]).read_text())
            print(f"boot ({result['backend']}/{result['accel']}/{result['machine']}): console ready "
                  f"{result['seconds']['console_ready']:.1f} s, ssh ready {result['seconds']['ssh_ready']:.1f} s, "
                  f"boot step {step_seconds(booted, 'boot'):.1f} s")
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
