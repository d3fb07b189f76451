"""Pushing blobs and manifests to a real docker-registry: HEAD, monolithic and chunked uploads,
a chunked upload resumed from what the registry says it holds, and refusals in one line."""
from __future__ import annotations

import hashlib
import os

import pytest
import requests

from banger.core import digest as dg
from banger.oci import registry_push as push
from banger.oci.registry_http import RetryPolicy

FAST = RetryPolicy(attempts=5, base_delay=0.0)


class Recording(requests.Session):
    """Remembers (method, status) of every request; can break one PATCH off halfway."""

    def __init__(self, break_patch: int | None = None):
        super().__init__()
        self.seen: list[tuple[str, int]] = []
        self.patches = 0
        self.break_patch = break_patch

    def request(self, method, url, data=None, headers=None, **kw):
        if method == "PATCH":
            self.patches += 1
            if self.patches == self.break_patch:  # the first half arrives, then the connection drops
                start, _ = (int(x) for x in headers["Content-Range"].split("-"))
                half = data[:len(data) // 2]
                cut = {**headers, "Content-Range": f"{start}-{start + len(half) - 1}",
                       "Content-Length": str(len(half))}
                resp = super().request(method, url, data=half, headers=cut, **kw)
                self.seen.append((method, resp.status_code))
                raise requests.ConnectionError("Connection reset by peer (simulated)")
        resp = super().request(method, url, data=data, headers=headers, **kw)
        self.seen.append((method, resp.status_code))
        return resp


@pytest.fixture
def payload(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(300_000))
    return path, "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def registry_bytes(registry, repo: str, digest: str) -> bytes:
    return requests.get(f"{registry.url}/v2/{repo}/blobs/{digest}", timeout=10).content


def test_monolithic_upload_then_head_finds_it(registry, payload, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", "/nonexistent")
    path, digest = payload
    client = push.push_client(registry.host, "pushtest/mono", retry=FAST)
    assert not push.has_blob(client, digest)
    assert push.upload_blob(client, path, digest) == path.stat().st_size
    assert push.has_blob(client, digest)
    assert registry_bytes(registry, "pushtest/mono", digest) == path.read_bytes()


def test_a_chunked_upload_broken_off_midway_goes_on_and_the_blob_is_whole(registry, payload, monkeypatch):
    """docker-registry drops an upload session once a chunk broke off (its upload URL carries the
    offset): banger asks for the upload's state, is told it is gone and starts a new upload."""
    monkeypatch.setenv("DOCKER_CONFIG", "/nonexistent")
    monkeypatch.setattr(push, "CHUNK_BYTES", 64 << 10)
    path, digest = payload
    session = Recording(break_patch=3)
    client = push.push_client(registry.host, "pushtest/chunked", retry=FAST, session=session)
    push.upload_blob(client, path, digest)
    assert registry_bytes(registry, "pushtest/chunked", digest) == path.read_bytes()
    methods = [m for m, _ in session.seen]
    assert methods.count("PATCH") >= 6  # 300 kB in 64 KiB chunks, one of them broken off
    assert ("GET", 404) in session.seen and methods.count("POST") == 2  # asked, then began anew


def test_a_blob_that_is_not_its_digest_is_refused_in_one_line(registry, payload, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", "/nonexistent")
    path, _ = payload
    client = push.push_client(registry.host, "pushtest/wrong", retry=FAST)
    wrong = dg.of_bytes(b"something else")
    with pytest.raises(push.PushRefused) as err:
        push.upload_blob(client, path, wrong)
    assert "\n" not in str(err.value) and "DIGEST_INVALID" in str(err.value)
    assert not push.has_blob(client, wrong)


def test_every_tag_is_listed(registry, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", "/nonexistent")
    client = push.push_client(registry.host, "pushtest/paged", retry=FAST)
    assert push.list_tags(client) == []  # no such repository yet
    empty = {"mediaType": "application/vnd.oci.empty.v1+json", "digest": dg.of_bytes(b"{}"), "size": 2}
    push.upload_bytes(client, b"{}", empty["digest"])
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": empty, "layers": [empty]}
    names = [f"t{i}" for i in range(5)]
    for name in names:
        push.put_manifest(client, name, manifest, manifest["mediaType"])
    # (Debian's docker-registry answers with every tag whatever n says: the Link-following
    # loop is not exercised by it)
    assert sorted(push.list_tags(client, page=2)) == names
