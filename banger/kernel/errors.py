"""The kernel package's error: bad names, damaged bundles, failed pulls; the message is one line."""
from __future__ import annotations


class KernelError(ValueError):
    """A kernel catalog problem the user can act on; the message is one line."""


class KernelNotInstalled(KernelError):
    """The kernel asked for (by name or as the configured default) has no bundle."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name
