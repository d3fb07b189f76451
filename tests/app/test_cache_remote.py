"""The artifact cache through a real registry (Debian's docker-registry on a loopback port):
push an image's records and outputs, pull them into an empty cache, build with zero steps run;
a second push sends no blob bytes; tampered entries are refused with one line, nothing cached."""
from __future__ import annotations

import dataclasses
import json

import pytest
import requests

from banger.app import build as build_app
from banger.app import cache_remote as remote
from banger.app import remote_layout as layout
from banger.core import config, images
from banger.core.store import Store
from banger.oci import registry_push as push
from tests.support_builds import small_build  # noqa: F401  (a fixture)


class CountingSession(requests.Session):
    """Counts the request body bytes banger sends (blob uploads and manifests)."""

    def __init__(self):
        super().__init__()
        self.sent: list[tuple[str, str, int]] = []

    def request(self, method, url, data=None, **kw):
        size = len(data) if isinstance(data, bytes) else (
            __import__("os").fstat(data.fileno()).st_size if hasattr(data, "fileno") else 0)
        self.sent.append((method, url, size))
        return super().request(method, url, data=data, **kw)

    def blob_bytes(self) -> int:
        return sum(n for m, u, n in self.sent if m == "PUT" and "/blobs/uploads/" in u)


def other_home(dirs: config.Dirs, tmp_path, name: str) -> config.Dirs:
    return dataclasses.replace(dirs, cache=tmp_path / name)


def test_push_pull_into_an_empty_cache_builds_with_zero_steps_run(small_build, registry, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker"))
    dirs, env, spec = small_build
    first = build_app.run_build(spec, dirs, log=lambda m: None)
    assert "ran" in {s["status"] for s in first.steps}
    target = f"{registry.host}/cachetest/push-pull"

    session = CountingSession()
    stats = remote.PushStats()
    remote.push_image(remote.client_for(target, session=session), Store(dirs.cache), "small", stats)
    assert stats.actions_sent == len(first.steps) and stats.bytes_sent > 0
    assert session.blob_bytes() == stats.bytes_sent

    again, session2 = remote.PushStats(), CountingSession()
    remote.push_image(remote.client_for(target, session=session2), Store(dirs.cache), "small", again)
    assert again.actions_sent == 0 and again.actions_present == len(first.steps)
    assert again.bytes_sent == 0 and session2.blob_bytes() == 0
    assert not [s for s in session2.sent if s[0] in ("PUT", "POST", "PATCH")]

    home_b = other_home(dirs, tmp_path, "b")
    store_b = Store(home_b.cache)
    result = remote.pull_image(remote.client_for(target), store_b, "small")
    assert result["records_pulled"] == len(first.steps) and not result["kept_local"]
    assert images.load(store_b, "small").artifacts == first.artifacts
    rebuilt = build_app.run_build(spec, home_b, log=lambda m: None)
    assert {s["status"] for s in rebuilt.steps} == {"cached"}
    assert rebuilt.artifacts == first.artifacts
    rootfs = first.artifacts["rootfs"]
    assert Store(home_b.cache).verify(rootfs, full=True)


def pushed(small_build, registry, repo: str) -> tuple[config.Dirs, images.ImageRecord, str]:
    dirs, env, spec = small_build
    first = build_app.run_build(spec, dirs, log=lambda m: None)
    target = f"{registry.host}/cachetest/{repo}"
    remote.push_image(remote.client_for(target), Store(dirs.cache), "small", remote.PushStats())
    return dirs, first, target


def action_manifest(target: str, key: str) -> dict:
    client = remote.client_for(target)
    body, _, _ = client.get_manifest(layout.action_tag(key))
    return json.loads(body)


def assert_nothing_cached(store: Store) -> None:
    assert list(store.artifacts()) == [] and list(store.records()) == [] and images.all_images(store) == []
    assert list((store.root / "staging").iterdir()) == []


def step_key(image: images.ImageRecord, step: str) -> str:
    return next(s["key"] for s in image.steps if s["step"] == step)


def test_a_tampered_blob_in_the_registry_is_refused_and_nothing_is_cached(small_build, registry, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker"))
    dirs, first, target = pushed(small_build, registry, "tampered-blob")
    layer = action_manifest(target, step_key(first, "ownership"))["layers"][0]
    data = registry.root / "data" / "docker/registry/v2/blobs/sha256" / layer["digest"][7:9] / layer["digest"][7:] / "data"
    original = data.read_bytes()
    raw = bytearray(original)
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))

    store_b = Store(tmp_path / "b")
    try:
        with pytest.raises(remote.RemoteRefused) as err:
            remote.pull_image(remote.client_for(target), store_b, "small")
    finally:  # the registry is the session's: blobs are shared by every repository (and test) in it
        data.write_bytes(original)
    line = str(err.value)
    assert "\n" not in line and "digest mismatch" in line and layer["digest"] in line and "(ownership)" in line
    # the steps before ownership were pulled (each is verified on its own); ownership's outputs and record were not
    assert store_b.get_record(step_key(first, "ownership")) is None
    assert not store_b.path(first.artifacts["rootfs"]).exists()
    assert images.all_images(store_b) == [] and list((store_b.root / "staging").iterdir()) == []


def put_entry(target: str, manifest: dict, config_bytes: bytes, tag: str) -> None:
    from banger.core import digest as dg
    from banger.oci import registry_push as push

    client = remote.client_for(target)
    digest = dg.of_bytes(config_bytes)
    push.upload_bytes(client, config_bytes, digest)
    manifest = {**manifest, "config": {**manifest["config"], "digest": digest, "size": len(config_bytes)}}
    push.put_manifest(client, tag, manifest, layout.MANIFEST_TYPE)


@pytest.mark.parametrize("forgery", ["a param changed", "an output redirected"])
def test_a_tampered_record_in_the_registry_is_refused_and_nothing_is_cached(small_build, registry, tmp_path,
                                                                           monkeypatch, forgery):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker"))
    dirs, first, target = pushed(small_build, registry, f"tampered-record-{forgery.split()[1]}")
    key = step_key(first, "ownership")
    manifest = action_manifest(target, key)
    record = Store(dirs.cache).get_record(key).to_json()
    if forgery == "a param changed":  # the key no longer matches the record's contents
        record["params"] = {**record["params"], "tampered": True}
        why = "its content does not match its key"
    else:  # the record names another image; its layer still holds the real one
        record["outputs"] = {**record["outputs"], "image": "blake3:" + "ab" * 32}
        manifest["layers"][0]["annotations"][layout.A_DIGEST] = "blake3:" + "ab" * 32
        why = "digest mismatch"
    put_entry(target, manifest, json.dumps(record).encode(), layout.action_tag(key))

    store_b = Store(tmp_path / "b")
    with pytest.raises(remote.RemoteRefused) as err:
        remote.pull_action(remote.client_for(target), store_b, key)
    assert "\n" not in str(err.value) and why in str(err.value) and "nothing was cached" in str(err.value)
    assert_nothing_cached(store_b)


def test_an_output_larger_than_the_import_cap_is_refused_before_it_is_downloaded(small_build, registry, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker"))
    dirs, first, target = pushed(small_build, registry, "capped")
    monkeypatch.setenv("BANGER_IMPORT_MAX_BYTES", "64K")  # the ownership image decodes to far more
    store_b = Store(tmp_path / "b")
    with pytest.raises(remote.RemoteRefused, match=r"\(ownership\).*over the cap of 65536 .*BANGER_IMPORT_MAX_BYTES"):
        remote.pull_action(remote.client_for(target), store_b, step_key(first, "ownership"))
    assert_nothing_cached(store_b)


def test_dropped_intermediate_images_are_not_pushed_and_a_pull_still_builds_nothing(small_build, registry,
                                                                                    tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker"))
    dirs, first, target = pushed(small_build, registry, "intermediates")
    for step in ("ext4", "inject"):  # their record goes up, their image does not (it is remade when needed)
        assert action_manifest(target, step_key(first, step))["layers"] == [layout.EMPTY]
    assert [layer["annotations"][layout.A_OUTPUT] for layer in
            action_manifest(target, step_key(first, "ownership"))["layers"]] == ["image"]
    home_b = other_home(dirs, tmp_path, "b")
    remote.pull_image(remote.client_for(target), Store(home_b.cache), "small")
    rebuilt = build_app.run_build(small_build[2], home_b, log=lambda m: None)
    assert {s["status"] for s in rebuilt.steps} == {"cached"} and rebuilt.artifacts == first.artifacts
    assert Store(home_b.cache).verify(first.artifacts["rootfs"], full=True)


def blob_puts(session: CountingSession) -> list[tuple[str, str, int]]:
    """The requests that carry blob bytes (a monolithic PUT, a chunk's PATCH)."""
    return [s for s in session.sent if s[0] in ("PUT", "PATCH") and "/blobs/uploads/" in s[1] and s[2] > 0]


def test_a_push_into_a_new_repository_mounts_the_blobs_another_one_holds(small_build, registry, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker"))
    dirs, first, target = pushed(small_build, registry, "mount-from")
    session, stats = CountingSession(), remote.PushStats()
    second = f"{registry.host}/cachetest/mount-into"
    remote.push_image(remote.client_for(second, session=session), Store(dirs.cache), "small", stats,
                      mount_from=["cachetest/mount-from"])
    assert stats.blobs_mounted > 0 and stats.blobs_sent == 0 and stats.bytes_sent == 0
    assert blob_puts(session) == [] and stats.actions_sent == len(first.steps)
    mounts = [u for m, u, _ in session.sent if m == "POST" and "mount=" in u]
    assert mounts and all("from=cachetest%2Fmount-from" in u or "from=cachetest/mount-from" in u for u in mounts)
    # the registry says the new repository has every blob, and it pulls back into an empty cache
    client = remote.client_for(second)
    for key in (s["key"] for s in first.steps):
        manifest = action_manifest(second, key)
        for desc in [manifest["config"], *manifest["layers"]]:
            assert push.has_blob(client, desc["digest"]), desc
    remote.pull_image(client, Store(tmp_path / "b"), "small")
    assert Store(tmp_path / "b").verify(first.artifacts["rootfs"], full=True)


def test_a_mount_the_source_cannot_serve_falls_back_to_an_upload(small_build, registry, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker"))
    dirs, env, spec = small_build
    first = build_app.run_build(spec, dirs, log=lambda m: None)
    stats = remote.PushStats()
    target = f"{registry.host}/cachetest/mount-fallback"
    remote.push_image(remote.client_for(target), Store(dirs.cache), "small", stats,
                      mount_from=["cachetest/never-pushed"])
    assert stats.blobs_mounted == 0 and stats.blobs_sent > 0
    remote.pull_image(remote.client_for(target), Store(tmp_path / "b"), "small")
    assert Store(tmp_path / "b").verify(first.artifacts["rootfs"], full=True)
