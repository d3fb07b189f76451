"""Pins: digests an owner outside the image records needs, kept while the owner's record exists."""
import json

import pytest

from banger.core import pins


def test_pin_then_pinned_then_unpin(tmp_path):
    owner = tmp_path / "vm.json"
    owner.write_text("{}")
    pins.pin(tmp_path, "vm-dev", ["blake3:bb", "blake3:aa", "blake3:aa"], owner)
    assert pins.pinned(tmp_path) == {"vm-dev": {"blake3:aa", "blake3:bb"}}
    doc = json.loads((tmp_path / "pins" / "vm-dev.json").read_text())
    assert doc == {"digests": ["blake3:aa", "blake3:bb"], "record": str(owner)}
    pins.unpin(tmp_path, "vm-dev")
    pins.unpin(tmp_path, "vm-dev")  # twice: nothing to do
    assert pins.pinned(tmp_path) == {}


def test_pinning_again_replaces_the_digests(tmp_path):
    owner = tmp_path / "vm.json"
    owner.write_text("{}")
    pins.pin(tmp_path, "vm-dev", ["blake3:aa"], owner)
    pins.pin(tmp_path, "vm-dev", ["blake3:cc"], owner)
    assert pins.pinned(tmp_path) == {"vm-dev": {"blake3:cc"}}


def test_a_pin_whose_owner_is_gone_is_dropped(tmp_path):
    pins.pin(tmp_path, "vm-gone", ["blake3:aa"], tmp_path / "removed-by-hand" / "vm.json")
    assert pins.pinned(tmp_path) == {}
    assert not (tmp_path / "pins" / "vm-gone.json").exists()


def test_an_unreadable_pin_pins_nothing_and_stays(tmp_path):
    (tmp_path / "pins").mkdir()
    (tmp_path / "pins" / "vm-bad.json").write_text("{half")
    (tmp_path / "pins" / "vm-list.json").write_text("[]")
    assert pins.pinned(tmp_path) == {}
    assert (tmp_path / "pins" / "vm-bad.json").exists() and (tmp_path / "pins" / "vm-list.json").exists()


def test_no_pins_dir(tmp_path):
    assert pins.pinned(tmp_path) == {}


@pytest.mark.parametrize("owner", ["", "../x", "a/b", "UPPER", ".hidden"])
def test_bad_owner_names_are_refused(tmp_path, owner):
    with pytest.raises(ValueError):
        pins.pin(tmp_path, owner, [], tmp_path)
