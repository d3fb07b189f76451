"""Action records: what a step made from what (key -> step, inputs, params, tools, outputs), and
the check a record read back from the store must pass before a build trusts it."""
from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from typing import Iterator

from banger.core import digest as dg
from banger.core.ram_trees import TREE


@dataclass
class ActionRecord:
    key: str
    step: str
    step_version: str
    inputs: dict
    params: dict
    tools: dict
    outputs: dict[str, str]
    info: dict = field(default_factory=dict)
    created: float = 0.0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return self.__dict__.copy()


# Intermediate disk images, each read only by the step after it: a build drops them once it is done
# (ext4's image feeds ownership, inject's feeds stage-kernel). Like trees, they are remade from
# their record by a step that needs one (engine.Build.materialize), so no record depends on one
# being present. Ownership's image, where a template edit starts from, stays.
INTERMEDIATES = {"ext4": ("image",), "inject": ("image",)}


def remakeable(record: "ActionRecord") -> set[str]:
    """The names of the record's outputs that may be absent from the store: trees and the
    intermediate disk images (INTERMEDIATES)."""
    step = record.step.split(":")[0]
    return {name for name, d in record.outputs.items()
            if d.startswith(TREE) or name in INTERMEDIATES.get(step, ())}


def intermediates(record: "ActionRecord") -> set[str]:
    """The digests of the record's intermediate disk images (what a finished build drops)."""
    return {record.outputs[name] for name in INTERMEDIATES.get(record.step.split(":")[0], ())
            if name in record.outputs}


def strings_in(value) -> Iterator[str]:
    """The strings in a record's inputs, outputs or extra (nested dicts and lists too), in order:
    the digests, with whatever else a caller filters out."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings_in(v)


def action_key(step: str, step_version: str, inputs: dict, params: dict, tools: dict) -> str:
    return dg.key_of({"step": step, "step_version": step_version, "inputs": inputs,
                      "params": params, "tools": tools})


class DamagedRecord(ValueError):
    """An action record file that is not a record (a flipped byte, a truncated or foreign file)."""


_RECORD_FIELDS = {f.name: f for f in fields(ActionRecord)}
_DICTS = ("inputs", "params", "tools", "outputs", "info")


def fields_problem(missing: set[str], unknown: set[str]) -> str:
    return "; ".join(f"{what} field{'s' if len(names) > 1 else ''} {', '.join(sorted(names))}"
                     for what, names in (("missing", missing), ("unknown", unknown)) if names)


def parse_record(data: bytes, key: str) -> ActionRecord:
    """The record stored under `key`, checked; DamagedRecord(why) if it is not one."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise DamagedRecord("not UTF-8") from None
    except ValueError:
        raise DamagedRecord("not valid JSON") from None
    if not isinstance(doc, dict):
        raise DamagedRecord("not a JSON object")
    required = {n for n, f in _RECORD_FIELDS.items() if f.default is MISSING and f.default_factory is MISSING}
    if required - doc.keys() or doc.keys() - _RECORD_FIELDS.keys():
        raise DamagedRecord(fields_problem(required - doc.keys(), doc.keys() - _RECORD_FIELDS.keys()))
    if not all(isinstance(doc[k], str) for k in ("key", "step", "step_version")) \
            or not all(isinstance(doc.get(k, {}), dict) for k in _DICTS) \
            or not all(isinstance(doc.get(k, 0), (int, float)) for k in ("created", "seconds")):
        raise DamagedRecord("a field has the wrong type")
    if not all(isinstance(d, str) and dg.DIGEST_RE.fullmatch(d.removeprefix(TREE)) for d in doc["outputs"].values()):
        raise DamagedRecord("an output is not a digest")
    record = ActionRecord(**doc)
    if record.key != key or action_key(record.step, record.step_version, record.inputs, record.params,
                                       record.tools) != key:
        raise DamagedRecord("its content does not match its key")
    return record
