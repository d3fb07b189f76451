"""The build pipeline, in order. Each step module yields doit task dicts made by engine.step_task.

    fetch blob -> flatten layers -> build ext4 -> apply ownership -> inject guest agents
    -> stage kernel -> boot VM

Before the first task: the kernel bundle must be installed and, when booting, the hypervisor
able to run (BuildError, one line), so a typo does not cost a fetch or a whole build first.
"""
from __future__ import annotations

from typing import Iterator

from banger.engine.tasks import Build
from banger.engine.spec import BuildSpec

STEPS = ("fetch", "flatten", "ext4", "ownership", "inject", "stage-kernel", "boot")


def tasks(build: Build, spec: BuildSpec) -> Iterator[dict]:
    from banger.steps import boot, ext4, fetch, flatten, inject, ownership, stage_kernel

    # what the user asked for that cannot work here is refused before the image is even resolved
    stage_kernel.choose_bundle(build, spec)
    if spec.boot:
        boot.check_hypervisor(spec)
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
    yield {"basename": "build", "doc": "build (and boot-check) an image", "actions": None,
           "task_dep": [last]}
