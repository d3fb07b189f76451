"""The registry client against a real docker-registry (and a misbehaving proxy in front of it)."""
from __future__ import annotations

import email.utils
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from banger.devtools import registry as devregistry
from banger.oci import registry_auth
from banger.oci.blob_download import partial_path
from banger.core.errors import BuildError
from banger.oci.registry import RegistryClient
from banger.oci.registry_http import RetryPolicy, Unreachable, base_url
from banger.core.store import Store
from tests.support_tools import need
from tests.support_registry import Proxy, docker_config, make_image, push

FAST = RetryPolicy(attempts=4, base_delay=0.01)


@dataclass
class Pushed:
    repo: str
    tag: str
    manifest: str  # digest
    config: dict  # descriptor
    layers: list


def _pushed(layout: Path, desc: dict, repo: str, tag: str) -> Pushed:
    manifest = json.loads((layout / "blobs" / "sha256" / desc["digest"][7:]).read_bytes())
    return Pushed(repo, tag, desc["digest"], manifest["config"], manifest["layers"])


@pytest.fixture(scope="module")
def images(registry, tmp_path_factory):
    need("skopeo")
    base = tmp_path_factory.mktemp("reg-images")
    small = make_image(base / "small", "v1", {"etc/hostname": b"small\n", "bin/hello": b"#!/bin/sh\necho hi\n"})
    push(base / "small", "v1", f"{registry.host}/regtest/small:v1")
    big = make_image(base / "big", "v1", {"big.bin": os.urandom(3 << 20)})  # random: gzip cannot shrink it
    push(base / "big", "v1", f"{registry.host}/regtest/big:v1")
    return {"small": _pushed(base / "small", small, "regtest/small", "v1"),
            "big": _pushed(base / "big", big, "regtest/big", "v1")}


@pytest.fixture
def proxy(registry):
    p = Proxy(registry.url).start()
    yield p
    p.stop()


@pytest.fixture
def no_creds(tmp_path, monkeypatch):
    """An empty HOME and no auth file: anonymous unless a test writes credentials."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    return tmp_path / "home"


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "cache")


def client(host, repo, **kw):
    kw.setdefault("retry", FAST)
    return RegistryClient(host, repo, **kw)


def no_partials(store: Store) -> bool:
    return not list((store.root / "staging").glob("partial-*"))


# ---- plain pulls ---------------------------------------------------------------------------------

def test_resolve_tag_fetch_manifest_and_blobs(registry, images, store, no_creds):
    img = images["small"]
    c = client(registry.host, img.repo)
    desc, body = c.resolve_tag("v1")
    assert body is None  # a HEAD was enough
    assert desc["digest"] == img.manifest
    assert desc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    manifest, content_type, digest = c.get_manifest(img.manifest)
    assert digest == img.manifest and json.loads(manifest)["layers"] == img.layers
    seen = []
    for d in [img.config, *img.layers]:
        assert c.fetch_blob(store, d, lambda done, total: seen.append((done, total))) == d["digest"]
        assert store.verify(d["digest"], full=True)
    assert seen[-1] == (img.layers[0]["size"], img.layers[0]["size"])
    assert no_partials(store)


def test_no_such_tag_or_repository(registry, images, no_creds):
    with pytest.raises(BuildError, match=r"no such image: .*regtest/small has no tag or digest nope \(it has: v1\); check the tag$"):
        client(registry.host, "regtest/small").resolve_tag("nope")
    with pytest.raises(BuildError, match=r"^no such repository: .*regtest/missing; check the image name$"):
        client(registry.host, "regtest/missing").resolve_tag("v1")


def test_unreachable_registry_fails_at_once(no_creds):
    dead = f"127.0.0.1:{devregistry.free_port()}"
    slept = []
    with pytest.raises(Unreachable, match=rf"^registry {dead} is unreachable \(Connection refused\); check"):
        client(dead, "x/y", sleep=slept.append).resolve_tag("v1")
    assert slept == []  # a refused connection is not worth retrying: offline fallback comes next


def test_plain_http_only_for_loopback_and_configured_hosts():
    assert base_url("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert base_url("localhost") == "http://localhost"
    assert base_url("[::1]:5000") == "http://[::1]:5000"
    assert base_url("registry.example.com") == "https://registry.example.com"
    assert base_url("10.0.0.5:5000") == "https://10.0.0.5:5000"
    assert base_url("10.0.0.5:5000", insecure=["10.0.0.5:5000"]) == "http://10.0.0.5:5000"
    assert base_url("10.0.0.5:5001", insecure=["10.0.0.5:5000"]) == "https://10.0.0.5:5001"


def test_redirect_to_plain_http_elsewhere_is_refused(proxy, images, tmp_path, no_creds):
    proxy.redirect_blobs, proxy.redirect_to = True, "http://blobs.example.invalid"
    img = images["small"]
    with pytest.raises(BuildError, match=r"not HTTPS; add the host to insecure_registries"):
        client(proxy.host, img.repo).fetch_blob(Store(tmp_path / "c"), img.layers[0])


# ---- authentication ----------------------------------------------------------------------------

def test_challenge_parsing():
    c = registry_auth.parse_challenge('Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push"')
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.example/token", "service": "reg", "scope": "repository:a/b:pull,push"}
    c = registry_auth.parse_challenge('Basic realm="x", Bearer realm="https://t/", service=s')
    assert c.scheme == "bearer" and c.params == {"realm": "https://t/", "service": "s"}
    assert registry_auth.parse_challenge('Basic realm="Registry Realm"').scheme == "basic"
    assert registry_auth.parse_challenge("Negotiate abc") is None


def user_pass(registry, repository):
    creds = registry_auth.find_credentials(registry, repository)
    return creds and (creds.username, creds.password)


def test_credential_lookup(tmp_path, no_creds, monkeypatch):
    cfg = no_creds / ".docker" / "config.json"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": "aHViOmh1YnB3"},  # hub:hubpw
        "ghcr.io": {"username": "u", "password": "p"},
        "ghcr.io/org/special": {"auth": "czpzcGVjaWFs"},  # s:special
        "other.example": {},  # a credential-helper style entry: no secret here
    }}))
    assert user_pass("registry-1.docker.io", "library/debian") == ("hub", "hubpw")
    assert user_pass("ghcr.io", "org/app") == ("u", "p")
    assert user_pass("ghcr.io", "org/special") == ("s", "special")
    assert user_pass("other.example", "x") is None
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {"ghcr.io": {"auth": "ZW52OmVudnB3"}}}))  # env:envpw
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(authfile))
    assert user_pass("ghcr.io", "org/app") == ("env", "envpw")
    assert user_pass("registry-1.docker.io", "library/debian") == ("hub", "hubpw")
    authfile.write_text(json.dumps({"auths": {"ghcr.io": {"auth": "not base64!"}}}))
    with pytest.raises(BuildError, match=r"is not base64 of user:password; log in again"):
        registry_auth.find_credentials("ghcr.io", "x")


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory):
    need("docker-registry", "htpasswd", "skopeo")
    root = tmp_path_factory.mktemp("auth-registry")
    htpasswd = root / "htpasswd"
    htpasswd.write_bytes(subprocess.run(["htpasswd", "-Bbn", "alice", "s3cret"], check=True,
                                        capture_output=True).stdout)
    reg = devregistry.start(root / "reg", htpasswd=htpasswd)
    layout = root / "layout"
    desc = make_image(layout, "v1", {"secret.txt": b"classified\n"})
    push(layout, "v1", f"{reg.host}/private/img:v1", creds="alice:s3cret")
    yield reg, _pushed(layout, desc, "private/img", "v1")
    reg.stop()


def test_basic_auth_with_docker_config_in_home(auth_registry, tmp_path, no_creds):
    reg, img = auth_registry
    docker_config(no_creds, reg.host, "alice", "s3cret")
    c = client(reg.host, img.repo)
    assert c.resolve_tag("v1")[0]["digest"] == img.manifest
    store = Store(tmp_path / "c")
    assert c.fetch_blob(store, img.layers[0]) == img.layers[0]["digest"]


def test_basic_auth_with_registry_auth_file(auth_registry, tmp_path, no_creds, monkeypatch):
    reg, img = auth_registry
    authfile = docker_config(tmp_path / "elsewhere", f"http://{reg.host}", "alice", "s3cret")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(authfile))
    assert client(reg.host, img.repo).resolve_tag("v1")[0]["digest"] == img.manifest


def test_basic_auth_without_or_with_wrong_credentials(auth_registry, no_creds):
    reg, img = auth_registry
    with pytest.raises(BuildError) as exc:
        client(reg.host, img.repo).resolve_tag("v1")
    msg = str(exc.value)
    assert msg.startswith(f"unauthorized: {reg.host} refused anonymous access to private/img")
    assert "~/.docker/config.json" in msg and "REGISTRY_AUTH_FILE" in msg and "\n" not in msg
    docker_config(no_creds, reg.host, "alice", "wrong")
    with pytest.raises(BuildError, match=r"^unauthorized: .* refused the credentials of 'alice' from .*config.json"):
        client(reg.host, img.repo).resolve_tag("v1")


def test_bearer_token_flow_anonymous(proxy, images, tmp_path, no_creds):
    proxy.bearer = True
    img = images["small"]
    c = client(proxy.host, img.repo)
    assert c.resolve_tag("v1")[0]["digest"] == img.manifest
    assert c.fetch_blob(Store(tmp_path / "c"), img.layers[0]) == img.layers[0]["digest"]
    tokens = proxy.requests_to("/token")
    assert len(tokens) == 1 and "Authorization" not in tokens[0].headers
    assert "scope=repository%3Aregtest%2Fsmall%3Apull" in tokens[0].path
    assert "service=test-registry" in tokens[0].path
    api = [s for s in proxy.seen if s.path.startswith("/v2/regtest/")]
    assert api and all(s.headers.get("Authorization") == f"Bearer {proxy.token}" for s in api)


def test_bearer_token_flow_with_credentials(proxy, images, tmp_path, no_creds, monkeypatch):
    proxy.bearer, proxy.token_creds = True, ("bob", "pw")
    img = images["small"]
    with pytest.raises(BuildError, match=rf"^unauthorized: {proxy.host} refused anonymous access"):
        client(proxy.host, img.repo).resolve_tag("v1")
    authfile = docker_config(tmp_path, proxy.host, "bob", "pw")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(authfile))
    assert client(proxy.host, img.repo).resolve_tag("v1")[0]["digest"] == img.manifest
    assert proxy.requests_to("/token")[-1].headers["Authorization"].startswith("Basic ")


def test_redirect_to_another_host_never_carries_authorization(proxy, images, tmp_path, no_creds):
    proxy.bearer, proxy.redirect_blobs = True, True
    img = images["small"]
    store = Store(tmp_path / "c")
    assert client(proxy.host, img.repo).fetch_blob(store, img.layers[0]) == img.layers[0]["digest"]
    blob_requests = proxy.requests_to("/blobs/")
    at_registry = [s for s in blob_requests if s.host.startswith("127.0.0.1")]
    at_cdn = [s for s in blob_requests if s.host.startswith("localhost")]
    assert at_cdn and at_registry
    assert all(s.headers.get("Authorization") == f"Bearer {proxy.token}" for s in at_registry)
    assert all("Authorization" not in s.headers for s in at_cdn)


# ---- hostile or flaky transfers ----------------------------------------------------------------

def test_corrupt_blob_is_rejected_and_nothing_is_kept(proxy, images, store, no_creds):
    img = images["small"]
    layer = img.layers[0]
    proxy.corrupt.add(layer["digest"])
    with pytest.raises(BuildError) as exc:
        client(proxy.host, img.repo).fetch_blob(store, layer)
    assert str(exc.value).startswith(f"digest mismatch: {proxy.host}/regtest/small served sha256:")
    assert str(exc.value).endswith(f"for blob {layer['digest']}; nothing was cached")
    assert not store.path(layer["digest"]).exists()
    assert no_partials(store)
    assert list(store.artifacts()) == []


def test_cut_download_resumes_with_range(proxy, images, store, no_creds):
    img = images["big"]
    layer = img.layers[0]
    proxy.cut[layer["digest"]] = 1
    assert client(proxy.host, img.repo).fetch_blob(store, layer) == layer["digest"]
    gets = [s for s in proxy.requests_to(f"/blobs/{layer['digest']}") if s.method == "GET"]
    assert len(gets) == 2
    assert "Range" not in gets[0].headers
    assert gets[1].headers["Range"] == f"bytes={layer['size'] // 2}-"
    assert store.verify(layer["digest"], full=True)
    assert no_partials(store)


def test_download_broken_off_in_one_run_resumes_in_the_next(proxy, images, store, no_creds):
    img = images["big"]
    layer = img.layers[0]
    proxy.cut[layer["digest"]] = 1
    with pytest.raises(BuildError, match=r"kept breaking off .*; run the build again to resume it$"):
        client(proxy.host, img.repo, retry=RetryPolicy(attempts=1)).fetch_blob(store, layer)
    assert partial_path(store, layer["digest"]).stat().st_size == layer["size"] // 2
    assert not store.path(layer["digest"]).exists()
    assert client(proxy.host, img.repo).fetch_blob(store, layer) == layer["digest"]
    assert proxy.requests_to("/blobs/")[-1].headers["Range"] == f"bytes={layer['size'] // 2}-"
    assert store.verify(layer["digest"], full=True) and no_partials(store)


def test_bad_partial_from_an_earlier_run_is_discarded(proxy, images, store, no_creds):
    img = images["big"]
    layer = img.layers[0]
    partial_path(store, layer["digest"]).write_bytes(b"\0" * 1000)  # not a prefix of the blob
    assert client(proxy.host, img.repo).fetch_blob(store, layer) == layer["digest"]
    ranges = [s.headers.get("Range") for s in proxy.requests_to("/blobs/")]
    assert ranges == ["bytes=1000-", None]  # resumed, failed verification, fetched again from zero
    assert store.verify(layer["digest"], full=True)


def test_429_honours_retry_after_then_succeeds(proxy, images, no_creds):
    img = images["small"]
    later = email.utils.formatdate(time.time() + 3, usegmt=True)
    proxy.throttle += [("/manifests/", "2"), ("/manifests/", later)]
    slept = []
    c = RegistryClient(proxy.host, img.repo, retry=RetryPolicy(attempts=4, base_delay=0.01), sleep=slept.append)
    assert c.resolve_tag("v1")[0]["digest"] == img.manifest
    assert slept[0] == 2.0 and 1.0 < slept[1] <= 3.0
    assert len(proxy.requests_to("/manifests/v1")) == 3


def test_retries_are_bounded(proxy, images, no_creds):
    proxy.throttle += [("/manifests/", "0")] * 10
    slept = []
    c = RegistryClient(proxy.host, images["small"].repo, retry=RetryPolicy(attempts=3), sleep=slept.append)
    with pytest.raises(BuildError, match=r"answered 429 to HEAD manifests/v1 3 times \(rate limited; logging in"):
        c.resolve_tag("v1")
    assert len(slept) == 2


def test_5xx_on_a_blob_is_retried_with_backoff(proxy, images, tmp_path, no_creds):
    img = images["small"]
    proxy.throttle += [("/blobs/", None, 503), ("/blobs/", None, 502)]
    slept = []
    store = Store(tmp_path / "c")
    c = RegistryClient(proxy.host, img.repo, retry=RetryPolicy(attempts=4, base_delay=0.25), sleep=slept.append)
    assert c.fetch_blob(store, img.layers[0]) == img.layers[0]["digest"]
    assert slept == [0.25, 0.5]  # exponential when the server names no Retry-After
    assert store.verify(img.layers[0]["digest"], full=True)
