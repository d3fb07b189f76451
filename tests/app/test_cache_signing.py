"""Signatures of registry cache entries: bound to the entry's tag and its config's digest."""
from __future__ import annotations

import dataclasses

import pytest

from banger.app import cache_signing as signing
from banger.app.cache import CacheError
from banger.core import config


@pytest.fixture
def signer(tmp_path):
    dirs = config.Dirs(cache=tmp_path / "c", state=tmp_path / "s", config=tmp_path / "conf")
    public = signing.keygen(dirs)
    loaded = signing.load_signer(dirs)
    assert loaded.public == public
    return loaded


def entry(signer, tag: str, digest: str) -> dict:
    return {"annotations": signer.annotations(tag, digest)}


def test_a_signature_holds_only_for_its_tag_and_config(signer):
    tag, digest = "action-" + "a" * 64, "sha256:" + "b" * 64
    trusted = [signer.public]
    assert signing.problem(entry(signer, tag, digest), tag, digest, trusted) is None
    assert "does not verify" in signing.problem(entry(signer, tag, digest), tag, "sha256:" + "c" * 64, trusted)
    assert "does not verify" in signing.problem(entry(signer, tag, digest), "action-" + "d" * 64, digest, trusted)
    assert signing.problem({}, tag, digest, []) is None  # no trust configured: unsigned is fine
    assert "not signed" in signing.problem({}, tag, digest, trusted)


def test_trusted_keys_must_be_banger_public_keys(signer):
    assert signing.trusted_keys({"trusted_keys": [signer.public]}) == [signer.public]
    for bad in (["ssh-ed25519 AAAA"], "banger-ed25519:x", ["banger-ed25519:" + "A" * 8]):
        with pytest.raises(CacheError, match="trusted_keys in banger's config must be a list"):
            signing.trusted_keys({"trusted_keys": bad})


def test_a_damaged_key_file_is_one_line(tmp_path):
    dirs = config.Dirs(cache=tmp_path / "c", state=tmp_path / "s", config=tmp_path / "conf")
    (tmp_path / "conf").mkdir()
    signing.key_path(dirs).write_text("not a key")
    with pytest.raises(CacheError, match="is not an ed25519 private key; remove it"):
        signing.load_signer(dataclasses.replace(dirs))
