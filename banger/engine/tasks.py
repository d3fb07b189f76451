"""Run pipeline steps as doit tasks whose up-to-date check is the content-addressed store.

A step is a plain function plus a doit task dict made by `step_task`. The task's key is computed
when doit reaches it (after its dependencies ran), from the digests its dependencies produced.
It is up to date when an action record with that key exists and its outputs verify; it runs
under a per-key lock and writes its record only after its outputs are in the store, so a
`kill -9` loses at most the step that was running.
"""
from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from banger.core.diskspace import disk_full, is_enospc
from banger.core.errors import BuildError
from banger.core.progress import activity
from banger.core.records import strings_in
from banger.core.store import TREE, ActionRecord, Store, action_key, remakeable


@dataclass
class StepRun:
    """What a step's work function gets: its inputs, params and a private staging dir."""
    build: "Build"
    stage: Path
    inputs: dict
    params: dict
    info: dict = field(default_factory=dict)  # extra facts for the record (sizes, versions...)
    output_store: Store | None = None  # where outputs go; a scratch store when re-checking

    @property
    def store(self) -> Store:
        return self.output_store or self.build.store

    def path(self, digest: str) -> Path:
        return self.build.store.path(digest)


@dataclass
class StepReport:
    step: str
    status: str  # "ran" | "cached"
    seconds: float
    key: str


@dataclass
class StepDef:
    name: str
    version: str
    inputs: Callable[[], dict]
    params: Callable[[], dict]
    tools: Callable[[], dict]
    work: Callable[[StepRun], dict[str, str]]
    spinner: bool = True  # False for steps that draw their own progress bars
    # what an input digest is made of ({input: {part: digest}}), kept in the record's info (never
    # in the key) so that --explain can name the parts that changed, e.g. one template file
    parts: Callable[[], dict] | None = None

    def key_parts(self) -> dict:
        return {"inputs": self.inputs(), "params": self.params(), "tools": self.tools()}

    def key(self, parts: dict | None = None) -> str:
        p = parts or self.key_parts()
        return action_key(self.name, self.version, p["inputs"], p["params"], p["tools"])


class Build:
    """State shared by the tasks of one build: the store, resolved records, the report."""

    def __init__(self, store: Store, log: Callable[[str], None] | None = None):
        self.store = store
        self.records: dict[str, ActionRecord] = {}
        self.report: list[StepReport] = []
        self.steps: dict[str, StepDef] = {}
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.context: dict[str, Any] = {}  # per-build facts the steps share (image ref, kernel...)
        self.error: str | None = None
        # consulted on a local miss (--cache-from): key -> the record, pulled, verified and in the
        # store, or None; it warns (build.log) and returns None when the remote cannot help
        self.remote: Callable[[str], ActionRecord | None] | None = None
        # told (event, fields) when a step starts running and when it is done: the build's
        # journal that `banger ui` shows live (core/journal.py)
        self.on_event: Callable[..., None] | None = None

    def _event(self, event: str, **fields) -> None:
        if self.on_event is not None:
            self.on_event(event, **fields)

    def output(self, step: str, name: str) -> str:
        try:
            return self.records[step].outputs[name]
        except KeyError:
            raise BuildError(f"internal: step {step!r} has no output {name!r} yet") from None

    def output_path(self, step: str, name: str) -> Path:
        return self.store.path(self.output(step, name))

    # ---- the two halves of a doit task -----------------------------------------------------
    def lookup(self, step: StepDef) -> ActionRecord | None:
        key = step.key()
        record = self.store.get_record(key)
        if record is not None and self.store.record_valid(record):
            return record
        why = self.store.damaged.pop(key, None)
        if why:
            self.log(f"{step.name}: its cached record was damaged ({why}); removed it, the step runs again")
        if self.remote is not None:
            record = self.remote(key)
            if record is not None and record.step == step.name and self.store.record_valid(record):
                return record
        return None

    def is_cached(self, step: StepDef) -> bool:
        start = time.monotonic()
        record = self.lookup(step)
        if record is None:
            return False
        self._accept(step, record, "cached", time.monotonic() - start)
        return True

    def execute(self, step: StepDef) -> None:
        start = time.monotonic()
        parts = step.key_parts()
        key = step.key(parts)
        with self.store.lock(key):
            record = self.lookup(step)  # a concurrent build may have made it while we waited
            if record is not None:
                self._accept(step, record, "cached", time.monotonic() - start)
                return
            self._event("step-start", step=step.name)
            needed = self.remakeable_inputs(parts["inputs"])
            with self.store.using(needed), self.store.staging(f"{step.name.replace(':', '-')}-") as stage:
                self.materialize(needed)
                run = StepRun(self, stage, parts["inputs"], parts["params"])
                with activity(step.name) if step.spinner else contextlib.nullcontext():
                    outputs = step.work(run)
            record = ActionRecord(key=key, step=step.name, step_version=step.version,
                                  inputs=parts["inputs"], params=parts["params"],
                                  tools=parts["tools"], outputs=outputs,
                                  info={**run.info, **({"parts": step.parts()} if step.parts else {})},
                                  created=time.time(), seconds=round(time.monotonic() - start, 3))
            self.store.put_record(record)
        self._accept(step, record, "ran", time.monotonic() - start)

    def recheck(self, name: str) -> list[str]:
        """Run a cached step's work again on its recorded inputs, into a scratch store; the
        differences from the recorded outputs (empty = the step is reproducible)."""
        from banger.core.fsutil import first_difference

        record, step = self.records[name], self.steps[name]
        needed = self.remakeable_inputs(record.inputs)
        with self.store.using(needed), self.store.staging(f"check-{name.replace(':', '-')}-") as scratch_dir:
            self.materialize(needed)
            scratch = Store(scratch_dir / "store")
            with scratch.staging() as stage:
                outputs = step.work(StepRun(self, stage, record.inputs, record.params, output_store=scratch))
            differences = []
            for out, digest in record.outputs.items():
                again = outputs.get(out)
                if again != digest:
                    where = first_difference(self.store.path(digest), scratch.path(again)) if again else None
                    differences.append(f"{name}.{out}: cached {digest[:23]}…, rebuilt {str(again)[:23]}…"
                                       + (f" ({where})" if where else ""))
        return differences

    def remakeable_inputs(self, inputs: dict) -> list[str]:
        """The inputs a step must have materialized before it reads them: trees, and the
        outputs of this build's steps that a build may drop (records.remakeable)."""
        optional = {r.outputs[n] for r in self.records.values() for n in remakeable(r)}
        return list(dict.fromkeys(d for d in strings_in(inputs) if d.startswith(TREE) or d in optional))

    def materialize(self, digests: list[str]) -> None:
        """Make sure the trees and intermediate images a step is about to read are here and intact
        (the caller holds their use locks, Store.using): one that is gone (evicted from RAM, a
        reboot, dropped after its build) or corrupt is remade by rerunning the step of this build
        that recorded it, on that record's inputs (made present the same way first)."""
        for digest in digests:
            path = self.store.path(digest)
            if path.exists() and (self.store.verify_for_use(digest) if digest.startswith(TREE)
                                  else self.store.verify(digest)):
                continue
            producer = next((r for r in self.records.values() if digest in r.outputs.values()), None)
            if producer is None:
                raise BuildError(f"internal: no step of this build recorded {digest[:24]}…")
            self.log(f"remaking {producer.step}'s output (not in the cache any more)")
            needed = self.remakeable_inputs(producer.inputs)
            with self.store.using(needed), self.store.staging(f"{producer.step.replace(':', '-')}-") as stage:
                self.materialize(needed)
                outputs = self.steps[producer.step].work(StepRun(self, stage, producer.inputs, producer.params))
            if digest not in outputs.values():
                self.store.put_record(ActionRecord(**{**producer.to_json(), "outputs": outputs}))
                raise BuildError(f"step {producer.step} made a different output than it recorded "
                                 f"({digest[:24]}…); its record is updated, run the build again")

    def _accept(self, step: StepDef, record: ActionRecord, status: str, seconds: float) -> None:
        self.records[step.name] = record
        self.store.touch_record(record.key)
        for d in record.outputs.values():
            self.store.touch(d)
        self.report.append(StepReport(step.name, status, round(seconds, 3), record.key))
        self._event("step", step=step.name, status=status, seconds=round(seconds, 3))


def step_task(build: Build, *, name: str, version: str, work: Callable[[StepRun], dict[str, str]],
              inputs: Callable[[], dict], params: Callable[[], dict] | dict | None = None,
              tools: Callable[[], dict] | dict | None = None, deps: tuple[str, ...] = (),
              doc: str = "", subtask: str | None = None, spinner: bool = True,
              parts: Callable[[], dict] | None = None) -> dict:
    """The doit task dict for one content-addressed step (`subtask`: one of several, e.g. a layer).

    Records are looked up as `build.records["name"]` or `build.records["name:subtask"]`.
    """
    full = f"{name}:{subtask}" if subtask else name
    step = StepDef(full, version, inputs, _thunk(params), _thunk(tools), work, spinner, parts)
    build.steps[full] = step

    def uptodate() -> bool:
        return build.is_cached(step)

    def action():
        from doit.exceptions import TaskFailed

        try:
            build.execute(step)
        except BuildError as exc:
            build.error = str(exc)
            return TaskFailed(build.error)
        except (OSError, ValueError, RuntimeError) as exc:  # the user gets one line, not a traceback
            build.error = f"step {full} failed: {_disk_full(exc, build) if is_enospc(exc) else exc}"
            return TaskFailed(build.error)
        return None

    task = {"basename": name, "doc": doc or (work.__doc__ or "").strip().split("\n")[0],
            "actions": [action], "uptodate": [uptodate], "task_dep": list(deps), "verbosity": 2}
    if subtask:
        task["name"] = subtask
    return task


def _disk_full(exc: OSError, build: Build) -> str:
    target = exc.filename or build.store.root
    return disk_full(Path(target), f"what it writes in {target}", show_free=False)  # its staging is gone



def _thunk(value: Callable[[], dict] | dict | None) -> Callable[[], dict]:
    if callable(value):
        return value
    frozen = dict(value or {})
    return lambda: frozen
