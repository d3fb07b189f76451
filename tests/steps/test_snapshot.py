"""The snapshot step's parts that need no VM: the image check that spares an older image a boot
that would never quiesce, the command line, and the build words. (The boots: tests/vm/.)"""
from __future__ import annotations

import subprocess

import pytest

from banger.core.errors import BuildError
from banger.engine.spec import SpecError, parse_words
from banger.rootfs.guest_assets import SCRIPTS_DIR, SNAPSHOT_WORD
from banger.steps import snapshot
from tests.support_tools import need


def ext4_with(tmp_path, files: dict[str, str]):
    need("mkfs.ext4", "debugfs")
    root = tmp_path / "root"
    for rel, text in files.items():
        (root / rel.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / rel.lstrip("/")).write_text(text)
    root.mkdir(exist_ok=True)
    image = tmp_path / "rootfs.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(image), "16M"], check=True, capture_output=True)
    return image


def test_an_image_with_resume_sh_can_be_snapshotted(tmp_path):
    assert snapshot.has_resume_agent(ext4_with(tmp_path, {f"{SCRIPTS_DIR}/resume.sh": "#!/bin/sh\n"}))


def test_an_older_image_is_refused_before_any_boot(tmp_path):
    image = ext4_with(tmp_path, {f"{SCRIPTS_DIR}/agent.sh": "#!/bin/sh\n"})
    assert not snapshot.has_resume_agent(image)
    with pytest.raises(BuildError, match="older banger.*rebuild it"):
        snapshot.take({"rootfs": image}, snapshot.Shape("qemu", "tcg", "pc"), "", tmp_path, None, print)


def test_a_file_that_is_no_file_system_is_one_line(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"\0" * 4096)
    with pytest.raises(BuildError, match="cannot read the image's file system"):
        snapshot.has_resume_agent(junk)


def test_the_snapshot_boot_quiesces_has_a_fixed_identity_and_no_getty():
    words = snapshot.snapshot_cmdline("quiet").split()
    assert SNAPSHOT_WORD in words and snapshot.NO_GETTY in words
    assert f"banger.id={snapshot.SNAPSHOT_ID}" in words and words[-1] == "quiet"
    assert snapshot.snapshot_cmdline() == snapshot.snapshot_cmdline()  # part of the key: stable


def test_snapshot_words():
    assert parse_words(["image=x", "snapshot=yes"]).snapshot is True
    assert parse_words(["image=x"]).snapshot is False
    with pytest.raises(SpecError, match="snapshot=yes or snapshot=no"):
        parse_words(["image=x", "snapshot=maybe"])
