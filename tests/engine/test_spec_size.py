"""size= as people write it: ASCII digits only, and nothing absurd (one line naming the largest)."""
from __future__ import annotations

import pytest

from banger.engine.spec import MAX_SIZE, SpecError, parse_size, parse_words
from banger.vm import disks
from banger.vm.records import VMStateError


@pytest.mark.parametrize("text, size", [("2G", 2 << 30), ("512M", 512 << 20), ("1T", 1 << 40), ("16T", 16 << 40),
                                        ("4096", 4096), ("2GiB", 2 << 30), ("0016T", 16 << 40)])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["٣G", "３G", "١٠٢٤M", "2G\u0663", "²G"])
def test_only_ascii_digits_are_a_size(text):
    with pytest.raises(SpecError) as exc:
        parse_size(text)
    assert str(exc.value) == f"size={text!r} is not a size; use e.g. size=2G or size=512M"


@pytest.mark.parametrize("text", ["99999999999T", "17T", "16385G", "9" * 5000, "9" * 5000 + "T"])
def test_absurd_sizes_are_one_line_naming_the_largest(text):
    with pytest.raises(SpecError) as exc:
        parse_words(["image=x", f"size={text}"])
    msg = str(exc.value)
    assert "\n" not in msg and len(msg) < 200
    assert msg.endswith("is larger than banger supports; the largest is size=16T")
    assert MAX_SIZE == 16 << 40


@pytest.mark.parametrize("text", ["٣G", "99999999999T", "9" * 5000])
def test_vm_sizes_too(text):
    with pytest.raises(VMStateError) as exc:
        disks.parse_size(text, "--disk-size", "--disk-size 8G")
    assert "\n" not in str(exc.value) and len(str(exc.value)) < 200
