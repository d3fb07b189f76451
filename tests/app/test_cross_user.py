"""No user's SSH key is baked into an image (identity.sh adds the host user's at boot), so users
with different managed keys build the same bytes and share one cache entry by entry."""
from __future__ import annotations

import dataclasses

from banger.app import build as build_app
from banger.rootfs import sshkey
from tests.support_builds import small_build  # noqa: F401  (a fixture)


def test_two_homes_with_different_keys_build_the_same_image_and_share_a_cache(small_build, tmp_path):
    dirs, env, spec = small_build
    first = build_app.run_build(spec, dirs, log=lambda m: None)
    other = dataclasses.replace(dirs, cache=tmp_path / "cache2", state=tmp_path / "state2" / "banger")
    other.state.mkdir(parents=True)
    (other.state / "kernels").symlink_to(dirs.state / "kernels")
    assert sshkey.ensure_key(dirs.state).public_line != sshkey.ensure_key(other.state).public_line

    theirs = build_app.run_build(spec, other, log=lambda m: None)
    assert {s["status"] for s in theirs.steps} == {"ran"}
    assert theirs.artifacts == first.artifacts  # the same rootfs digest, from an empty cache
    assert [s["key"] for s in theirs.steps] == [s["key"] for s in first.steps]

    shared = build_app.run_build(spec, dataclasses.replace(other, cache=dirs.cache), log=lambda m: None)
    assert {s["status"] for s in shared.steps} == {"cached"}
