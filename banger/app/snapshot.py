"""A snapshot of an image for one machine shape, as `banger vm create` needs it: the snapshot
step run through doit like every step (cached: a lookup; else the image boots once and is
saved), and dropping one that failed to restore."""
from __future__ import annotations

from typing import Callable

from banger.core import inflight, procs
from banger.core.config import Dirs, load_config
from banger.core.errors import BuildError
from banger.core.store import ActionRecord, Store
from banger.engine.tasks import Build
from banger.steps import snapshot as step

Shape = step.Shape


class Damaged(RuntimeError):
    """The snapshot for this image and shape exists but an output failed verification; it was
    dropped (the message is one line). The VM boots cold; the next one makes it again."""


def ensure(dirs: Dirs, artifacts: dict[str, str], shape: Shape,
           log: Callable[[str], None]) -> tuple[ActionRecord, str]:
    """The snapshot record for these image artifacts (rootfs, kernel, initrd, vmlinux) and this
    shape, and whether it was "cached" or "ran". BuildError (one line) when it cannot be made."""
    build = Build(Store(dirs.cache, dirs.trees), log)
    build.context["dirs"] = dirs
    user = str((load_config(dirs).get("boot") or {}).get("cmdline", ""))
    inputs = {k: artifacts[k] for k in ("rootfs", "kernel", "initrd", "vmlinux") if k in artifacts}
    task = step.snapshot_task(build, lambda: dict(inputs), shape, step.snapshot_cmdline(user, shape.backend))
    key = build.steps[step.NAME].key()
    found = build.store.get_record(key)
    if found is not None and not build.store.record_valid(found):  # a damaged output is removed
        drop(dirs, found)
        raise Damaged(f"snapshot {key[:12]} failed verification (its memory or disk file is damaged or gone)")
    if found is not None and build.is_cached(build.steps[step.NAME]):  # the task's own up-to-date check:
        return build.records[step.NAME], "cached"  # a hit needs no doit run (a tenth of a second)
    from banger.engine import doit_runner

    dep_file = build.store.root / "staging" / f"doit-snapshot-{procs.owner_tag()}.json"

    def tasks():  # doit wants a generator
        yield task

    try:
        with inflight.building(dirs.cache, log):  # `banger cache gc` waits for it
            code = doit_runner.run(build, tasks, dep_file, targets=(step.NAME,))
    finally:
        for p in dep_file.parent.glob(dep_file.name + "*"):
            p.unlink(missing_ok=True)
    if code != 0 or step.NAME not in build.records:
        raise BuildError(build.error or f"the snapshot step failed (doit exit code {code})")
    return build.records[step.NAME], build.report[-1].status


def drop(dirs: Dirs, record: ActionRecord) -> None:
    """Forget a snapshot that did not restore: its record and its memory file (and Firecracker's
    state file). Its disk layer stays until `banger cache gc` (VMs restored earlier may run on it;
    their pins keep it)."""
    store = Store(dirs.cache, dirs.trees)
    store.remove_record(record.key)
    for role in ("memory", "vmstate"):
        if role in record.outputs:
            store.remove(record.outputs[role])
