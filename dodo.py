"""doit entry point: in a checkout, `doit build image=REF [name=N] ...` does what
`banger build image=REF ...` does, with the checkout's cache/ directory as the artifact cache
($BANGER_CACHE_DIR still wins, as it does for the CLI). `doit list` shows the pipeline's steps."""
import os
from pathlib import Path

from doit import get_var

from banger.app.build import drop_intermediates, hold_for_process, new_build, record_image, summary_lines
from banger.core.cachedir import NotACacheError
from banger.core.config import CACHE_ENV, default_dirs
from banger.core.errors import BuildError
from banger.engine.doit_runner import doit_config
from banger.engine.spec import KEYS, SpecError, parse_words
from banger.steps import pipeline

CACHE = Path(__file__).resolve().parent / "cache"
_builds: list = []
DOIT_CONFIG = doit_config(_builds, CACHE / ".doit.db")


def task_build():
    """Build (and boot-check) image=REF."""
    try:
        spec = parse_words([f"{k}={get_var(k)}" for k in KEYS if get_var(k)], command="doit build")
        build = new_build(spec, default_dirs(os.environ.get(CACHE_ENV) or CACHE))
        hold_for_process(build)  # `banger cache gc` waits for this build (and its image record)
        task_dicts = list(pipeline.tasks(build, spec))
    except (SpecError, BuildError, NotACacheError) as exc:
        yield from pipeline.outline(str(exc))
        return

    def finish() -> None:
        if build.error is None and "image" in build.context:
            print("\n".join(summary_lines(record_image(build, spec), build.store)))
            drop_intermediates(build)  # as `banger build` does: remade from their records when needed

    build.context["on_complete"] = finish
    _builds.append(build)
    yield from task_dicts
