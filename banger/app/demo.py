"""`banger demo`: build and boot the embedded default image with the default kernel."""
from __future__ import annotations

from typing import Callable

from banger.app.build import run_build
from banger.core.cachedir import open_cache
from banger.core.config import Dirs
from banger.core.errors import BuildError
from banger.core.images import ImageRecord
from banger.devtools.debian_image import ensure_demo_image
from banger.engine.spec import parse_words
from banger.kernel.debian import ensure_default_kernel
from banger.kernel.errors import KernelError


def run_demo(dirs: Dirs, boot: bool = True, log: Callable[[str], None] = print) -> ImageRecord:
    """Pull the Debian cloud kernel when no kernel is installed, start a local registry holding a
    Debian bookworm image made with debootstrap (built once, then cached), and build it."""
    try:
        open_cache(dirs.cache)  # the demo's registry is kept in the cache: make it one first
        ensure_default_kernel(dirs, log=log)
        registry, ref = ensure_demo_image(dirs.cache / "demo", log=log)
    except (KernelError, RuntimeError, OSError) as exc:
        raise BuildError(str(exc)) from None
    try:
        words = [f"image={ref}", *([] if boot else ["boot=no"])]
        log("banger build " + " ".join(words))
        return run_build(parse_words(words), dirs, log=log)
    finally:
        registry.stop()
