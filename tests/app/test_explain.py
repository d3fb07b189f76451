"""--explain names the parts of an input that changed (template files), from the record's info."""
from __future__ import annotations

from banger.app.build import _changed_parts


def test_changed_parts_are_named_added_removed_or_changed():
    before = {"a.j2": "blake3:1", "b.j2": "blake3:2", "gone.j2": "blake3:3"}
    after = {"a.j2": "blake3:1", "b.j2": "blake3:9", "new.j2": "blake3:4"}
    assert _changed_parts(before, after) == "b.j2 changed, gone.j2 removed, new.j2 added"


def test_unknown_or_equal_parts_say_nothing_so_the_digests_are_shown():
    assert _changed_parts(None, {"a.j2": "blake3:1"}) == ""  # a record written before parts were kept
    assert _changed_parts({"a.j2": "blake3:1"}, {"a.j2": "blake3:1"}) == ""  # e.g. only params changed
