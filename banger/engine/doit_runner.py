"""Hand a build's task generator to doit and collect what happened."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from banger.engine.tasks import Build


def doit_config(build_holder: list, dep_file: Path) -> dict:
    return {
        "dep_file": str(dep_file),
        "backend": "json",
        "verbosity": 2,
        "reporter": _reporter_class(build_holder),
        "default_tasks": ["build"],
        "sort": "definition",  # `doit list`: the steps in pipeline order
    }


def _reporter_class(build_holder: list):
    """A doit reporter that prints one line per step that runs (the summary is printed by the CLI)."""

    class StepReporter:
        desc = "banger step lines"

        def __init__(self, outstream, options):
            self.out = outstream
            self.failures: list[str] = []

        def _log(self, msg: str) -> None:
            build = build_holder[0] if build_holder else None
            (build.log if build else print)(msg)

        def initialize(self, tasks, selected_tasks): pass
        def get_status(self, task): pass
        def add_success(self, task): pass
        def skip_uptodate(self, task): pass
        def skip_ignore(self, task): pass
        def teardown_task(self, task): pass
        def complete_run(self):
            """Under plain `doit` (dodo.py) nobody else prints the outcome, so we do."""
            build = build_holder[0] if build_holder else None
            if build is None or "on_complete" not in build.context:
                return
            if build.error:
                self._log(f"error: {build.error}")
            else:
                build.context["on_complete"]()

        def execute_task(self, task):
            if task.actions and not task.name.startswith("_"):
                self._log(f"running {task.name}")

        def add_failure(self, task, fail):
            build = build_holder[0] if build_holder else None
            if build is not None and build.error is None:
                build.error = f"step {task.name} failed: {fail.get_msg().strip().splitlines()[-1]}"
            self.failures.append(task.name)

        def cleanup_error(self, exception):
            self._log(exception.get_msg())

        def runtime_error(self, msg):
            build = build_holder[0] if build_holder else None
            if build is not None and build.error is None:
                build.error = msg.strip()
            self.failures.append(msg)

    return StepReporter


def run(build: Build, tasks: Callable[[], Iterator[dict]], dep_file: Path,
        targets: tuple[str, ...] = ("build",), words: tuple[str, ...] = ()) -> int:
    """Run `targets` through doit; returns doit's exit code (0 = all steps cached or ran)."""
    from doit.cmd_base import ModuleTaskLoader
    from doit.doit_cmd import DoitMain

    holder = [build]
    namespace = {"task_build": tasks, "DOIT_CONFIG": doit_config(holder, dep_file)}
    dep_file.parent.mkdir(parents=True, exist_ok=True)
    main = DoitMain(ModuleTaskLoader(namespace), extra_config={"GLOBAL": {}})
    return main.run(["run", *words, *targets])
