"""The backends by name: the one place that knows every VM implementation.

The base class (vm.py) knows none of them, so qemu.py and firecracker.py can import it freely.
"""
from __future__ import annotations

from banger.hypervisor.choice import Choice
from banger.hypervisor.firecracker import FirecrackerVM
from banger.hypervisor.qemu import QemuVM
from banger.hypervisor.vm import VM, VMConfig, VMError

BACKENDS: dict[str, type[VM]] = {"qemu": QemuVM, "firecracker": FirecrackerVM}


def create(choice: Choice, config: VMConfig) -> VM:
    """The VM handle for the chosen backend (not started yet)."""
    try:
        return BACKENDS[choice.backend](choice, config)
    except KeyError:
        raise VMError(f"unknown VM backend {choice.backend!r}") from None
