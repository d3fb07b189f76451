"""What can be checked about an action record without running its step (`cache import`, `cache
verify`): an imported record is only as good as these checks, since its step is not rerun.

- its key is the hash of its step, version, inputs, params and tools (recomputed);
- its outputs are well-formed digests; what is recomputable from its inputs is recomputed: a
  fetch outputs exactly the blob its input names, a flatten's chain_id is that of its layers;
- provenance: a disk image (an "image" or "rootfs" output) has one derivation. Two records that
  claim the same disk image from different steps or different inputs cannot both be right (a
  forged record pointing legitimate inputs at another image's rootfs is exactly that). An output
  equal to one of the record's own inputs (a step that passed its image through) claims nothing.
"""
from __future__ import annotations

from typing import Iterable

from banger.core import digest as dg
from banger.core.records import strings_in
from banger.core.store import TREE, ActionRecord, action_key

PROVENANCE_OUTPUTS = ("image", "rootfs")  # disk images: one derivation each
RECORD_FIELDS = {"key", "step", "step_version", "inputs", "params", "tools", "outputs"}


def parse(data: object) -> ActionRecord:
    """An ActionRecord from untrusted JSON; ValueError (one line) if it is not one."""
    if not isinstance(data, dict) or not RECORD_FIELDS <= set(data):
        raise ValueError("not an action record")
    try:
        record = ActionRecord(**data)
    except TypeError:
        raise ValueError("not an action record (unknown fields)") from None
    if not (isinstance(record.key, str) and isinstance(record.step, str) and isinstance(record.step_version, str)
            and all(isinstance(v, dict) for v in (record.inputs, record.params, record.tools, record.outputs, record.info))):
        raise ValueError("not an action record (wrong field types)")
    return record


def problem(record: ActionRecord) -> str | None:
    """Why the record cannot be right, from the record alone; None if nothing is wrong."""
    try:
        key = action_key(record.step, record.step_version, record.inputs, record.params, record.tools)
    except (TypeError, ValueError):
        return "its inputs are not plain JSON"
    if key != record.key:
        return "its key does not match its step, inputs, params and tools"
    for name, out in record.outputs.items():
        if not isinstance(out, str) or not dg.DIGEST_RE.fullmatch(out.removeprefix(TREE)):
            return f"its output {name!r} is not a digest"
    step = record.step.split(":")[0]
    if step == "fetch" and record.outputs != {"blob": record.inputs.get("blob")}:
        return "a fetch must output the very blob its input names"
    if step == "flatten":
        from banger.steps.flatten import chain_id

        layers = record.inputs.get("layers")
        try:
            chained = chain_id(layers) if isinstance(layers, list) and layers else None
        except (TypeError, ValueError):
            chained = None
        if chained is None or chained != record.inputs.get("chain_id"):
            return "its chain_id is not the chain of its layers"
    return None


def _derivation(record: ActionRecord) -> str:
    return dg.key_of({"step": record.step.split(":")[0], "inputs": record.inputs})


def claims(record: ActionRecord) -> set[str]:
    """The disk images this record says it made (not those it passed through from its inputs)."""
    own_inputs = set(strings_in(record.inputs))
    return {d for name, d in record.outputs.items()
            if name in PROVENANCE_OUTPUTS and isinstance(d, str) and d not in own_inputs}


def conflicts(records: Iterable[ActionRecord]) -> dict[str, list[ActionRecord]]:
    """{disk image digest: the records claiming it} where they claim it from different derivations."""
    by_digest: dict[str, list[ActionRecord]] = {}
    for record in records:
        for d in claims(record):
            by_digest.setdefault(d, []).append(record)
    return {d: rs for d, rs in by_digest.items() if len({_derivation(r) for r in rs}) > 1}

