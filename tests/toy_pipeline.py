"""A four-step pipeline on the real engine, store and doit, for engine tests run in subprocesses.

usage: toy_pipeline.py CACHE SEED LOG   (env TOY_SLOW=step makes that step sleep TOY_SLEEP s)
Each executed step appends "<step> <pid>" to LOG.
"""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from banger.engine import doit_runner  # noqa: E402
from banger.engine.tasks import Build, step_task  # noqa: E402
from banger.core.store import Store  # noqa: E402

STEPS = ("one", "two", "three", "four")


def main(cache: str, seed: str, log: str) -> int:
    build = Build(Store(Path(cache)), log=lambda m: None)

    def make(name: str, prev: str | None) -> dict:
        def work(run):
            with open(log, "a") as f:
                f.write(f"{name} {os.getpid()}\n")
            if os.environ.get("TOY_SLOW") == name:
                time.sleep(float(os.environ.get("TOY_SLEEP", "30")))
            out = run.stage / "out"
            out.write_text(f"{name}({run.inputs})")
            return {"out": run.store.ingest_file(out)}

        inputs = (lambda: {"seed": seed}) if prev is None else (lambda: {"prev": build.output(prev, "out")})
        return step_task(build, name=name, version="1", work=work, inputs=inputs,
                         deps=(prev,) if prev else ())

    def tasks():
        prev = None
        for name in STEPS:
            yield make(name, prev)
            prev = name
        yield {"basename": "build", "actions": None, "task_dep": [STEPS[-1]]}

    dep = Path(cache) / "staging" / f"doit-{os.getpid()}.json"
    code = doit_runner.run(build, tasks, dep)
    print(" ".join(f"{r.step}={r.status}" for r in build.report))
    return code


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
