"""VM records and directories: names are hostnames, reserve() is atomic, half-made and retired
directories are not VMs, bad records give one-line errors, the lock is shared across processes."""
from __future__ import annotations

import json

import pytest

from banger.vm import records
from banger.vm.records import VMStateError
from tests.vm.conftest import write_record


@pytest.mark.parametrize("name", ["a", "0", "dev-1", "a-b-c", "x" * 63, "9lives", "web01"])
def test_check_name_accepts_hostname_labels(name):
    assert records.check_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", "a-", "Dev", "a_b", "a.b", "a b", "x" * 64, "é", "a\n", "../x"])
def test_check_name_refuses_what_is_not_a_hostname_label(name):
    with pytest.raises(VMStateError) as err:
        records.check_name(name)
    message = str(err.value)
    assert "\n" not in message and "not a valid VM name" in message and "--name" in message


def test_reserve_a_given_name_twice_names_the_fix(tmp_path):
    assert records.reserve(tmp_path, "dev") == "dev"
    assert (tmp_path / "vms" / "dev").is_dir()
    with pytest.raises(VMStateError) as err:
        records.reserve(tmp_path, "dev")
    message = str(err.value)
    assert "\n" not in message and "'dev' exists" in message
    assert "--name" in message and "banger vm rm dev" in message


def test_reserve_refuses_a_bad_name_and_makes_nothing(tmp_path):
    with pytest.raises(VMStateError):
        records.reserve(tmp_path, "Bad_Name")
    assert list((tmp_path / "vms").iterdir()) == []


def test_generated_names_are_unique_valid_hostnames(tmp_path):
    made = [records.reserve(tmp_path, None) for _ in range(300)]
    assert len(set(made)) == len(made)
    for name in made:
        assert records.NAME_RE.match(name) and len(name) <= 63, name
        assert (tmp_path / "vms" / name).is_dir()
    assert all(name.count("-") in (1, 2) for name in made)


def test_vms_dir_is_private(tmp_path):
    records.reserve(tmp_path, "dev")
    assert (tmp_path / "vms").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "vms" / "dev").stat().st_mode & 0o777 == 0o700


def test_names_lists_only_directories_with_a_record(vm_env):
    write_record(vm_env, "beta")
    write_record(vm_env, "alpha")
    base = records.vms_dir(vm_env.state)
    (base / "half-made").mkdir()  # reserved, the disk being made: no vm.json yet
    retired = base / ".removing-gamma-123"  # an rm in progress (or killed)
    retired.mkdir()
    (retired / "vm.json").write_text("{}")
    (base / "stray.json").write_text("{}")
    assert records.names(vm_env.state) == ["alpha", "beta"]


def test_names_of_a_fresh_state_dir_is_empty(tmp_path):
    assert records.names(tmp_path) == []


def test_save_then_load_round_trips(vm_env):
    saved = write_record(vm_env, "dev", extra={"note": "x"}, vmm_start=12345)
    assert records.load(vm_env.state, "dev") == saved


def test_load_of_a_missing_vm(vm_env):
    with pytest.raises(VMStateError) as err:
        records.load(vm_env.state, "ghost")
    assert str(err.value) == "no VM named 'ghost'; `banger vm list --all` shows them"


@pytest.mark.parametrize("content", ["{not json", "", "[1, 2]", '"a string"', "null", "\xff\xfe"])
def test_load_of_a_corrupt_record_is_one_line_naming_the_fix(vm_env, content):
    write_record(vm_env, "dev")
    (records.vm_dir(vm_env.state, "dev") / "vm.json").write_bytes(content.encode("latin-1"))
    with pytest.raises(VMStateError) as err:
        records.load(vm_env.state, "dev")
    message = str(err.value)
    assert "\n" not in message and "vm.json" in message and "banger vm rm --force dev" in message


def test_load_ignores_fields_a_newer_banger_added(vm_env):
    write_record(vm_env, "dev")
    path = records.vm_dir(vm_env.state, "dev") / "vm.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "from_the_future": 1}))
    assert records.load(vm_env.state, "dev").name == "dev"


def test_load_of_a_record_missing_fields(vm_env):
    write_record(vm_env, "dev")
    (records.vm_dir(vm_env.state, "dev") / "vm.json").write_text(json.dumps({"name": "dev", "state": "running"}))
    with pytest.raises(VMStateError) as err:
        records.load(vm_env.state, "dev")
    message = str(err.value)
    assert "\n" not in message and "not a banger VM record" in message and "rm --force dev" in message


def test_locked_without_wait_yields_false_while_another_process_holds_it(vm_env, lock_holder):
    write_record(vm_env, "dev")
    holder = lock_holder(vm_env.state, "dev")
    with records.locked(vm_env.state, "dev", wait=False) as mine:
        assert mine is False
    holder.stdin.close()
    holder.wait(10)
    with records.locked(vm_env.state, "dev", wait=False) as mine:
        assert mine is True
        with records.locked(vm_env.state, "dev", wait=False) as again:  # a second open file: refused too
            assert again is False


def test_locked_on_an_unknown_vm(vm_env):
    with pytest.raises(VMStateError, match="no VM named 'ghost'"):
        with records.locked(vm_env.state, "ghost"):
            pass


@pytest.mark.parametrize("delta, text", [
    (0, "just now"), (59, "just now"), (60, "1 minute ago"), (61, "1 minute ago"), (150, "2 minutes ago"),
    (3600, "1 hour ago"), (7199, "1 hour ago"), (7200, "2 hours ago"), (86400, "1 day ago"),
    (3 * 86400 + 5, "3 days ago"), (-100, "just now"),  # a clock that went back
])
def test_age(delta, text):
    assert records.age(1_000_000.0 - delta, now=1_000_000.0) == text


def test_new_ids_are_machine_ids():
    made = {records.new_id() for _ in range(100)}
    assert len(made) == 100 and all(len(i) == 32 and int(i, 16) >= 0 for i in made)


def test_a_dir_a_killed_create_left_is_reused_once_it_is_old_and_unlocked(tmp_path):
    import os
    import time

    state = tmp_path / "state"
    assert records.reserve(state, "left") == "left"  # a create killed before it wrote vm.json
    with pytest.raises(VMStateError):  # young: a create may still be between mkdir and lock
        records.reserve(state, "left")
    old = time.time() - records.STALE_AFTER - 5
    os.utime(records.vm_dir(state, "left"), (old, old))
    assert records.stale_names(state) == ["left"]
    assert records.reserve(state, "left") == "left"
    assert records.stale_names(state) == ["left"]  # the new reservation, young again
    records.vm_dir(state, "kept").mkdir()
    (records.vm_dir(state, "kept") / "vm.json").write_text("{}")
    os.utime(records.vm_dir(state, "kept"), (old, old))
    assert not records.remove_if_stale(state, "kept")  # it has a record: a VM, not debris
