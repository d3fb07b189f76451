"""The one-line errors the VM layer (and what it calls) raises for the user: every front end
(the CLI's `error: ...`, `banger ui`'s message) shows them as they are, never a traceback."""
from __future__ import annotations


def user_errors() -> tuple[type[BaseException], ...]:
    from banger.core.errors import BuildError
    from banger.core.images import ImageError
    from banger.engine.spec import SpecError
    from banger.hypervisor.choice import HypervisorError
    from banger.hypervisor.vm import VMError
    from banger.rootfs.guest_assets import AssetError
    from banger.vm.records import VMStateError
    from banger.vm.sshconfig import SshConfigError

    return (BuildError, ImageError, SpecError, HypervisorError, VMError, AssetError, VMStateError, SshConfigError)
