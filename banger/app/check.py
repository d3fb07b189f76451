"""`banger build … --check`: redo every cached step on its recorded inputs and compare bytes."""
from __future__ import annotations

import dataclasses

from banger.app.build import building, drop_intermediates, execute
from banger.core.config import Dirs
from banger.engine.spec import BuildSpec

# fetch outputs are the registry's bytes checked against their digests; boot observes a VM
NOT_DETERMINISTIC_BY_DESIGN = ("fetch", "boot")


def check_reproducible(spec: BuildSpec, dirs: Dirs) -> dict:
    spec = dataclasses.replace(spec, boot=False)
    checked, differences = [], []
    with building(dirs):  # the rechecks read what the build found or made: gc waits
        build = execute(spec, dirs, log=lambda m: None)  # a check: the image's name record is left alone
        for name in build.records:
            if name.split(":")[0] in NOT_DETERMINISTIC_BY_DESIGN:
                continue
            differences += build.recheck(name)
            checked.append(name)
        drop_intermediates(build)  # those the rechecks remade
    lines = [f"rebuilt {', '.join(checked)} from their recorded inputs in a scratch store"]
    lines += differences or ["identical: every step produced the same bytes as the cached build"]
    return {"identical": not differences, "differences": differences, "checked": checked, "lines": lines}
