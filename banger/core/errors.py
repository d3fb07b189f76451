"""The error every layer raises when the user can act on it: the message is one line."""
from __future__ import annotations


class BuildError(Exception):
    """A step failed for a reason the user can act on; the message is one line."""
