"""One `banger build`: run the pipeline through doit, name the result, summarise it."""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Callable, Sequence

from banger.engine import doit_runner
from banger.core import images, inflight, journal, pins, procs
from banger.steps import pipeline
from banger.core.config import Dirs, keep_trees
from banger.engine.tasks import Build
from banger.core.errors import BuildError
from banger.engine.spec import BuildSpec
from banger.core.store import TREE, Store


def new_build(spec: BuildSpec, dirs: Dirs, log: Callable[[str], None] | None = None) -> Build:
    build = Build(Store(dirs.cache, dirs.trees), log)
    build.context["dirs"] = dirs
    build.context["spec"] = spec
    return build


def run_build(spec: BuildSpec, dirs: Dirs, log: Callable[[str], None] | None = None,
              cache_from: Sequence[str] = (), cache_to: str | None = None) -> images.ImageRecord:
    """`cache_from`: registries consulted on a local miss (with `cache_from` in the config);
    `cache_to`: where the image's records and outputs are pushed after the build. A registry that
    cannot be used costs one warning line, the build goes on locally (cache_remote.py)."""
    with building(dirs, log), journaled(spec, dirs, log) as log:  # until the image is named, nothing
        record = record_image(execute(spec, dirs, log, cache_from), spec)  # references what it made
    if cache_to:
        from banger.app import cache_remote_ops

        cache_remote_ops.push_after_build(dirs, cache_to, record.name, log or (lambda msg: None))
    return record


@contextlib.contextmanager
def journaled(spec: BuildSpec, dirs: Dirs, log: Callable[[str], None] | None = None):
    """The build's journal (core/journal.py) for `banger ui`: yields the log to build with, which
    also writes each line to the journal; `execute` finds the journal's steps hook in it."""
    shown = log or (lambda msg: None)
    try:
        j = journal.Journal(dirs.state, spec_words(spec))
    except OSError as exc:  # no journal, no live view: the build itself goes on
        shown(f"warning: cannot write the build journal ({exc}); `banger ui` will not show this build live")
        yield log
        return

    def both(message: str) -> None:
        j.write("log", message=message)
        shown(message)

    both.journal = j  # type: ignore[attr-defined]
    try:
        yield both
    except BaseException as exc:
        j.close(False, str(exc) or type(exc).__name__)
        raise
    j.close(True)


def spec_words(spec: BuildSpec) -> list[str]:
    """The `key=value` words of a spec (its non-default fields)."""
    default = BuildSpec(image=spec.image)
    words = [f"image={spec.image}"]
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if f.name != "image" and value != getattr(default, f.name):
            words.append(f"{f.name}={'yes' if value is True else 'no' if value is False else value}")
    return words


def building(dirs: Dirs, log: Callable[[str], None] | None = None) -> contextlib.AbstractContextManager[None]:
    """Keeps `banger cache gc` from evicting a running build's artifacts (core/inflight.py)."""
    return inflight.building(dirs.cache, log or (lambda msg: None))


def hold_for_process(build: Build) -> None:
    """`building` for as long as this process lives (dodo.py: doit runs the tasks after
    task_build returned)."""
    stack = contextlib.ExitStack()
    stack.enter_context(inflight.building(build.store.root, build.log))
    build.context["inflight"] = stack


def execute(spec: BuildSpec, dirs: Dirs, log: Callable[[str], None] | None = None,
            cache_from: Sequence[str] = ()) -> Build:
    """Run every step (cached ones cost a lookup); raises BuildError with one line on failure."""
    with building(dirs, log):
        return _execute(spec, dirs, log, cache_from)


def _execute(spec: BuildSpec, dirs: Dirs, log: Callable[[str], None] | None = None,
             cache_from: Sequence[str] = ()) -> Build:
    build = new_build(spec, dirs, log)
    j = getattr(log, "journal", None)
    if j is not None:
        build.on_event = j.write
    from banger.app import cache_remote_ops

    cache_remote_ops.attach(build, dirs, cache_from)
    # checks kernel= and hypervisor=, then resolves the image; errors here are one line
    task_dicts = list(pipeline.tasks(build, spec))
    dep_file = build.store.root / "staging" / f"doit-{procs.owner_tag()}.json"
    try:
        code = doit_runner.run(build, lambda: (t for t in task_dicts), dep_file)
    finally:
        for p in dep_file.parent.glob(dep_file.name + "*"):
            p.unlink(missing_ok=True)
        kept = [d for r in build.records.values() for d in r.outputs.values() if d.startswith(TREE)]
        build.store.evict_volatile_trees(keep=kept if keep_trees(dirs) else [])
        if build.store.ram and build.store.ram.refused:
            build.log(f"warning: {build.store.ram.refused}")
    if code != 0:
        raise BuildError(build.error or f"build failed (doit exit code {code})")
    drop_intermediates(build)
    return build


def drop_intermediates(build: Build) -> list[str]:
    """Remove the intermediate disk images of the build's steps (records.INTERMEDIATES: each only
    feeds the next step, which has run or is cached) unless something else holds them: a final
    output of this build, a named image's artifact, a VM's pin, a step reading it (use lock).
    A step that needs one again remakes it from its record (Build.materialize)."""
    from banger.core.records import intermediates

    store = build.store
    named, damaged = images.scan(store)
    if damaged or pins.damaged(store.root):  # either could name one of them: keep them all
        return []
    drop = {d for r in build.records.values() for d in intermediates(r)}
    # another step's output may be the same file (stage-kernel passes inject's image through
    # when the kernel has no modules): that one is final
    keep = {d for r in build.records.values() for d in r.outputs.values() if d not in intermediates(r)}
    for image in named:
        keep |= {d for d in image.artifacts.values() if isinstance(d, str)}
    for pinned in pins.pinned(store.root).values():
        keep |= set(pinned)
    return sorted(d for d in drop - keep if store.path(d).exists() and store.drop(d))


def artifacts_of(build: Build) -> dict[str, str]:
    artifacts: dict[str, str] = {}
    for step in ("ext4", "ownership", "inject"):
        if step in build.records:
            artifacts["rootfs"] = build.records[step].outputs["image"]
    if "stage-kernel" in build.records:
        artifacts.update(build.records["stage-kernel"].outputs)
    if "boot" in build.records:
        artifacts["boot-result"] = build.records["boot"].outputs["result"]
    return artifacts


def record_image(build: Build, spec: BuildSpec) -> images.ImageRecord:
    resolved = build.context["image"]
    artifacts = artifacts_of(build)
    rootfs = artifacts.get("rootfs")
    record = images.ImageRecord(
        name=spec.name or resolved.name,
        ref=resolved.ref,
        digest=resolved.manifest_digest,
        built_at=time.time(),
        artifacts=artifacts,
        steps=[{"step": r.step, "status": r.status, "seconds": r.seconds, "key": r.key}
               for r in build.report],
        rootfs_size=build.store.path(rootfs).stat().st_size if rootfs else 0,
        platform=getattr(resolved, "platform", ""),
        # manifests are in the store too; gc keeps them so an offline rebuild still resolves
        extra={"index_digest": getattr(resolved, "index_digest", None)},
    )
    try:
        previous = images.load(build.store, record.name)
    except images.ImageError:  # a first build, or a damaged record this build replaces
        previous = None
    record = images.add_build(previous, record)
    images.save(build.store, record)
    return record


def summary_lines(record: images.ImageRecord, store: Store) -> list[str]:
    lines = [f"image {record.name}  ({record.ref} @ {record.digest[:19]}…)"]
    width = max((len(s["step"]) for s in record.steps), default=4)
    for s in record.steps:
        lines.append(f"  {s['step']:<{width}}  {s['status']:<6}  {s['seconds']:7.2f} s")
    total = sum(s["seconds"] for s in record.steps)
    lines.append(f"  {'total':<{width}}  {'':<6}  {total:7.2f} s")
    for name, digest in record.artifacts.items():
        lines.append(f"  {name}: {store.path(digest)}")
    return lines


def history_lines(record: images.ImageRecord) -> list[str]:
    """`banger image history`: one line per kept build, oldest first, with what ran."""
    def when(t: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))

    builds = record.history()
    lines = [f"image {record.name}: {len(builds)} build(s) kept, oldest first; its artifacts were made "
             f"{when(record.built_at)}"]
    for b in builds:
        steps = b["steps"]
        ran = [x for x in steps if x.get("status") == "ran"]
        total = sum(float(x.get("seconds", 0)) for x in steps)
        what = (f"ran {len(ran)} of {len(steps)} steps in {total:.2f} s: "
                + ", ".join(f"{x['step']} {float(x['seconds']):.2f} s" for x in ran)) if ran \
            else f"all {len(steps)} steps cached ({total:.2f} s)"
        lines.append(f"  {when(b['at'])}  {str(b.get('digest', ''))[:19]}…  {what}")
    return lines


def explain(spec: BuildSpec, dirs: Dirs) -> list[dict]:
    """Per step: cached or will-run, and why (which input changed since the image's last build)."""
    build = new_build(spec, dirs, log=lambda msg: None)
    for _ in pipeline.tasks(build, spec):
        pass  # creating the tasks registers the steps (after the kernel and hypervisor checks, as a build)
    previous = _previous_keys(build, spec)
    out = []
    blocked: str | None = None
    for name, step in build.steps.items():
        if blocked:
            out.append({"step": name, "status": "will-run", "why": f"its input comes from {blocked}, which will run"})
            continue
        try:
            parts = step.key_parts()
        except BuildError:
            out.append({"step": name, "status": "will-run", "why": "an input it needs is not built yet"})
            continue
        record = build.lookup(step)
        if record is not None:
            build.records[name] = record
            out.append({"step": name, "status": "cached", "why": f"record {record.key[:12]} is in the store"})
            continue
        out.append({"step": name, "status": "will-run", "why": _why(build, name, parts, previous)})
        blocked = name
    return out


def _previous_keys(build: Build, spec: BuildSpec) -> dict[str, str]:
    resolved = build.context.get("image")
    name = spec.name or getattr(resolved, "name", None)
    try:
        return {s["step"]: s["key"] for s in images.load(build.store, name).steps} if name else {}
    except images.ImageError:
        return {}


def _why(build: Build, name: str, parts: dict, previous: dict[str, str]) -> str:
    old = build.store.get_record(previous[name]) if name in previous else None
    if old is None:
        return "never built with these inputs"
    changed = []
    step = build.steps[name]
    now_parts = step.parts() if step.parts else {}
    for section in ("inputs", "params", "tools"):
        before, after = getattr(old, section), parts[section]
        for k in sorted(set(before) | set(after)):
            if before.get(k) != after.get(k):
                what = f"{section[:-1] if section != 'params' else 'param'} {k}: "
                named = _changed_parts(old.info.get("parts", {}).get(k), now_parts.get(k))
                changed.append(what + (named or f"{_short(before.get(k))} -> {_short(after.get(k))}"))
    if not changed and old.step_version != build.steps[name].version:
        changed.append(f"step version {old.step_version} -> {build.steps[name].version}")
    return "; ".join(changed) or "its outputs are missing or failed verification"


def _changed_parts(before: dict | None, after: dict | None) -> str:
    """'network.sh.j2 changed, x.j2 added' from two {part: digest} maps; '' when either is unknown
    (a record from before parts were kept) or they agree (the change is elsewhere)."""
    if not before or not after:
        return ""
    words = [f"{p} {'added' if p not in before else 'removed' if p not in after else 'changed'}"
             for p in sorted(set(before) | set(after)) if before.get(p) != after.get(p)]
    return ", ".join(words)


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 30 else text[:27] + "..."
