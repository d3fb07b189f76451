"""What the ext4 step's post-read tree check costs on a real root filesystem.

    python3 bench/bench_tree_check.py OCI_LAYOUT[:TAG] [--work DIR]

Fetches and flattens the image (e.g. the Debian test image under cache/test-fixtures/debian-oci)
into a fresh cache under --work, runs the ext4 step, and times:
  ext4 step          the whole step (build_ext4 plus the check)
  check, fresh tree  Store.tree_intact right after flatten made the tree (files written within
                     RACY_NS of the walk are read again)
  check, old tree    tree_intact in a new process-like store that verified the tree (as a build
                     whose tree came from the cache does): only a stat() walk
  full rehash        tree_digest of the whole tree (what a check without the stat cache costs)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from banger.core.store import Store, tree_digest  # noqa: E402
from banger.engine.spec import BuildSpec  # noqa: E402
from banger.engine.tasks import Build  # noqa: E402
from banger.steps import ext4, fetch, flatten  # noqa: E402


def timed(label: str, fn, *args):
    t = time.monotonic()
    result = fn(*args)
    print(f"{label}: {time.monotonic() - t:.3f} s", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("layout")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-tree-check-", dir=args.work) as work:
        store = Store(Path(work) / "cache")
        build = Build(store, log=lambda m: None)
        build.context["config"] = {}
        spec = BuildSpec(image=f"oci-layout:{args.layout}")
        for mod in (fetch, flatten, ext4):
            list(mod.tasks(build, spec))
        for step in list(build.steps.values()):
            if step.name == "ext4":
                real, checks = store.tree_intact, []

                def timed_check(digest: str, real=real, checks=checks) -> bool:
                    start = time.monotonic()
                    try:
                        return real(digest)
                    finally:
                        checks.append(time.monotonic() - start)

                store.tree_intact = timed_check
            if not build.is_cached(step):
                build.execute(step)
        tree = build.output("flatten", "tree")
        paths = list(store.path(tree).rglob("*"))
        size = sum(p.lstat().st_size for p in paths if p.is_file() and not p.is_symlink())
        print(f"tree: {len(paths)} entries, {size / 2**20:.0f} MiB in files")
        print(f"ext4 step: {build.report[-1].seconds:.3f} s")
        print(f"check, fresh tree (in the step): {checks[0]:.3f} s")
        time.sleep(Store.RACY_NS / 1e9 + 0.5)  # the tree is "old" now: no file is racy
        again = Store(store.root)
        again.verify(tree, full=True)
        for _ in range(3):
            timed("check, old tree (stat walk)", again.tree_intact, tree)
            timed("full rehash", tree_digest, store.path(tree))


if __name__ == "__main__":
    main()
