"""`banger build … --check`: rebuild an image from scratch beside the cache and compare bytes."""
from __future__ import annotations

import dataclasses
import os

from .build import run_build
from .config import Dirs
from .spec import BuildSpec
from .store import Store


def check_reproducible(spec: BuildSpec, dirs: Dirs) -> dict:
    spec = dataclasses.replace(spec, boot=False)
    cached = run_build(spec, dirs, log=lambda m: None)
    store = Store(dirs.cache)
    with store.staging("check-") as scratch:
        # Reuse the fetched OCI blobs (hardlinks: same filesystem) so the check needs no network.
        oci_blobs = store.root / "blobs" / "sha256"
        target = scratch / "blobs" / "sha256"
        target.mkdir(parents=True)
        for blob in oci_blobs.iterdir() if oci_blobs.exists() else []:
            os.link(blob, target / blob.name)
        fresh = run_build(spec, dataclasses.replace(dirs, cache=scratch), log=lambda m: None)
        first = {s["step"]: store.get_record(s["key"]) for s in cached.steps}
        second = {s["step"]: Store(scratch).get_record(s["key"]) for s in fresh.steps}
    differences = []
    for step, record in first.items():
        again = second.get(step)
        if record is None or again is None:
            continue
        for name, digest in record.outputs.items():
            if again.outputs.get(name) != digest:
                differences.append(f"{step}.{name}: cached {digest[:20]}… rebuilt {again.outputs.get(name, '?')[:20]}…")
    ran = sorted(s["step"] for s in fresh.steps if s["status"] == "ran")
    lines = [f"rebuilt {len(ran)} steps from the fetched blobs in a scratch cache"]
    lines += differences or ["identical: every step produced the same bytes as the cached build"]
    return {"image": cached.name, "identical": not differences, "differences": differences,
            "rebuilt_steps": ran, "lines": lines}
