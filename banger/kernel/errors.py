"""The kernel package's error: bad names, damaged bundles, failed pulls; the message is one line."""
from __future__ import annotations


class KernelError(ValueError):
    """A kernel catalog problem the user can act on; the message is one line."""
