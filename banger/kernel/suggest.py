"""The kernel a build asked for, or one line naming what is installed and what can be pulled.

bundle.resolve cannot read the catalog (the catalog imports bundle), so a missing kernel's message
there stays generic; here it names the installed bundles and the shipped catalog's other entries,
and suggests `banger kernel pull NAME` only for a name the catalog has.
"""
from __future__ import annotations

from banger.core import config
from banger.kernel import bundle as kernel_bundle
from banger.kernel.bundle import Bundle, KernelError
from banger.kernel.errors import KernelNotInstalled


def resolve(dirs: config.Dirs, name: str | None = None) -> Bundle:
    """bundle.resolve, with a not-installed message that lists the kernels there are."""
    try:
        return kernel_bundle.resolve(dirs, name)
    except KernelNotInstalled as exc:  # other errors (a broken bundle, a bad name) are precise already
        raise KernelNotInstalled(not_installed(dirs, exc.name), exc.name) from None


def not_installed(dirs: config.Dirs, name: str) -> str:
    from banger.kernel.catalog import load_catalog  # only on this error path: a build needs no catalog

    installed = [b.name for b in kernel_bundle.list_bundles(dirs)]
    try:
        pullable = [e.name for e in load_catalog().entries if e.name not in installed]
    except KernelError:
        pullable = []
    if name == kernel_bundle.DEFAULT_KERNEL:
        return (f"kernel {name!r} is not installed; run `banger kernel pull {kernel_bundle.DEFAULT_SOURCE}`"
                + (f" or pick an installed one: {', '.join(installed)} (kernel=NAME)" if installed else ""))
    if name in pullable:
        return f"kernel {name!r} is not installed; run `banger kernel pull {name}`"
    have = f"installed: {', '.join(installed)} (kernel=NAME)" if installed else "no kernel is installed"
    more = " also" if installed else ""
    offer = f"; the catalog{more} has {', '.join(pullable)} (`banger kernel pull NAME`)" if pullable else ""
    return f"kernel {name!r} is not installed; {have}{offer}; see `banger kernel list --available`"
