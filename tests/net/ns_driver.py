"""Runs banger.net calls inside a test's network namespace (started by the tests with
`ip netns exec NS python -m tests.net.ns_driver STATE BRIDGE SUBNET OPS`), printing one JSON
result per op. OPS is a JSON list such as [["attach", "a"], ["status"]]. A NetError becomes
{"error": message}; ["attach_crash", vm] makes attach die right before it writes the lease;
["attach", vm, true] attaches as if systemd-resolved ran (the test puts a fake resolvectl on PATH)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest import mock

from banger.net import bridge
from banger.net.settings import BridgeSettings, NetError


def one(state: Path, settings: BridgeSettings, op: str, *args):
    if op == "attach":  # ["attach", vm] or ["attach", vm, resolved]: overrides the detection
        return bridge.attach(state, settings, args[0], *args[1:]).to_json()
    if op == "attach_crash":
        with mock.patch.object(bridge.store, "save_leases", side_effect=SystemError("simulated crash")):
            try:
                bridge.attach(state, settings, args[0])
            except SystemError:
                return "crashed"
        return "did not crash"
    if op == "release_tap":
        return bridge.release_tap(state, settings, args[0])
    if op == "detach":
        return bridge.detach(state, settings, args[0])
    if op == "leases":
        return {vm: lease.to_json() for vm, lease in bridge.leases(state).items()}
    if op == "cleanup":
        return bridge.cleanup(state, settings, lambda vm: vm in args)
    if op == "status":
        return bridge.status(state, settings)
    raise SystemExit(f"unknown op {op}")


def main() -> None:
    state, name, subnet, ops = sys.argv[1:5]
    settings = BridgeSettings(name=name, subnet=subnet)
    results = []
    for op in json.loads(ops):
        try:
            results.append(one(Path(state), settings, *op))
        except NetError as exc:
            results.append({"error": str(exc)})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
