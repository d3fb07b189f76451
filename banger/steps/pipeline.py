"""The build pipeline, in order. Each step module yields doit task dicts made by engine.step_task.

    fetch blob -> flatten layers -> build ext4 -> apply ownership -> inject guest agents
    -> stage kernel -> boot VM [-> snapshot, with snapshot=yes; `vm create` runs it on demand]

Before the first task: the kernel bundle must be installed and, when booting, the hypervisor
able to run (BuildError, one line), so a typo does not cost a fetch or a whole build first.
"""
from __future__ import annotations

from typing import Iterator

from banger.engine.tasks import Build
from banger.engine.spec import BuildSpec

DOCS = {  # the steps in order, with what `doit list` says of each
    "fetch": "resolve the image reference and fetch its blobs into the store",
    "flatten": "apply the image's layers, in order, into a tree plus the metadata it cannot hold",
    "ext4": "build a reproducible ext4 image from the flattened tree, without root",
    "ownership": "apply owners, modes, devices and xattrs to the ext4 image with debugfs",
    "inject": "inject banger's guest agents: network bootstrap, sshd, readiness agent",
    "stage-kernel": "stage the kernel bundle beside the rootfs (modules into it when needed)",
    "boot": "boot the image and probe it over SSH (boot=no skips it)",
    "snapshot": "boot it once more and save the whole machine for `vm create` (snapshot=yes)",
}
STEPS = tuple(DOCS)
BUILD_DOC = "build (and boot-check) an image: all the steps, in this order"


def outline(problem: str) -> Iterator[dict]:
    """The pipeline's tasks as `doit list` shows them when no build can be made (no image= given,
    a bad word): each step with its doc; running any of them prints `problem` and fails."""
    def refuse() -> bool:
        print(f"error: {problem}")
        return False

    for name, doc in DOCS.items():
        yield {"basename": name, "doc": doc, "actions": [refuse], "verbosity": 2}
    yield {"basename": "build", "doc": BUILD_DOC, "actions": [refuse], "verbosity": 2}


def tasks(build: Build, spec: BuildSpec) -> Iterator[dict]:
    from banger.steps import boot, ext4, fetch, flatten, inject, ownership, snapshot, stage_kernel

    # what the user asked for that cannot work here is refused before the image is even resolved
    stage_kernel.choose_bundle(build, spec)
    if spec.boot:
        boot.check_hypervisor(spec)
    if spec.snapshot:
        snapshot.check(spec)
    yield from fetch.tasks(build, spec)
    yield from flatten.tasks(build, spec)
    yield from ext4.tasks(build, spec)
    yield from ownership.tasks(build, spec)
    yield from inject.tasks(build, spec)
    yield from stage_kernel.tasks(build, spec)
    last = "stage-kernel"
    if spec.boot:
        yield from boot.tasks(build, spec)
        last = "boot"
    if spec.snapshot:
        yield from snapshot.tasks(build, spec, after=last)
        last = "snapshot"
    yield {"basename": "build", "doc": BUILD_DOC, "actions": None,
           "task_dep": [last]}
