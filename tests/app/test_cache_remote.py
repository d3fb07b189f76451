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
