"""The fetch step: resolve a reference (registry or OCI layout) and fetch its blobs, on the real
engine, store, doit and docker-registry."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from banger.devtools import registry as devregistry, oci_writer
from banger.engine import doit_runner
from banger.steps import fetch
from banger.engine.tasks import Build
from banger.core.errors import BuildError
from banger.oci.manifest import DOCKER_LIST, DOCKER_MANIFEST, OCI_MANIFEST
from banger.engine.spec import BuildSpec
from banger.core.store import Store
from tests.support_tools import need
from tests.support_registry import Proxy, make_image, make_tar, push


def new_build(cache: Path, logs: list | None = None) -> Build:
    build = Build(Store(cache), log=(logs.append if logs is not None else lambda m: None))
    build.context["config"] = {}
    build.context["progress"] = None
    return build


def run_fetch(build: Build, spec: BuildSpec) -> int:
    def tasks():
        yield from fetch.tasks(build, spec)
        yield {"basename": "build", "actions": None, "task_dep": ["fetch"]}
    return doit_runner.run(build, tasks, build.store.root / "staging" / "doit-test.json")


def two_layer_image(layout: Path, tag: str, arch: str = "amd64", variant: str | None = None) -> dict:
    layout.mkdir(parents=True, exist_ok=True)
    a = make_tar(layout.parent / f"{layout.name}-{arch}-a.tar", {"etc/os-release": f"ID={arch}\n".encode()})
    b = make_tar(layout.parent / f"{layout.name}-{arch}-b.tar", {"usr/bin/tool": b"\x7fELF" + arch.encode()})
    desc = oci_writer.write_image(layout, [oci_writer.Layer(a, "gzip"), oci_writer.Layer(b, "zstd")],
                                  oci_writer.ImageConfig(architecture=arch, variant=variant))
    oci_writer.write_index(layout, tag, [desc])
    return desc


def manifest_of(layout: Path, desc: dict) -> dict:
    return json.loads((layout / "blobs" / "sha256" / desc["digest"][7:]).read_bytes())


@pytest.fixture(scope="module")
def pushed(registry, tmp_path_factory):
    need("skopeo")
    base = tmp_path_factory.mktemp("fetch-images")
    one = two_layer_image(base / "one", "v1")
    push(base / "one", "v1", f"{registry.host}/fetchtest/one:v1")
    multi = base / "multi"
    amd = two_layer_image(multi, "amd")
    arm = two_layer_image(multi, "arm", arch="arm64", variant="v8")
    oci_writer.write_index(multi, "both", [amd, arm])
    push(multi, "both", f"{registry.host}/fetchtest/multi:v1", all_images=True)
    # Docker schema 2 and a Docker manifest list (skopeo converts; v2s2 has no zstd, so gzip only)
    make_image(base / "gz", "v1", {"etc/hostname": b"docker\n"})
    push(base / "gz", "v1", f"{registry.host}/fetchtest/docker:v1", fmt="v2s2")
    gz_amd = make_image(base / "gz", "amd", {"x": b"amd64"})
    gz_arm = make_image(base / "gz", "arm", {"x": b"arm64"}, arch="arm64", variant="v8")
    oci_writer.write_index(base / "gz", "both", [gz_amd, gz_arm])
    push(base / "gz", "both", f"{registry.host}/fetchtest/dockerlist:v1", all_images=True, fmt="v2s2")
    return {"host": registry.host, "base": base, "one": one, "amd": amd, "arm": arm,
            "one_manifest": manifest_of(base / "one", one)}


def test_resolve_and_fetch_a_single_platform_image(pushed, tmp_path):
    build = new_build(tmp_path / "cache")
    spec = BuildSpec(image=f"{pushed['host']}/fetchtest/one:v1")
    assert run_fetch(build, spec) == 0
    image = build.context["image"]
    manifest = pushed["one_manifest"]
    assert image.ref == f"{pushed['host']}/fetchtest/one:v1"
    assert (image.name, image.source, image.platform, image.offline) == ("one-v1", "registry", "linux/amd64", False)
    assert image.manifest_digest == pushed["one"]["digest"] and image.index_digest is None
    assert image.layers == manifest["layers"] and len(image.diff_ids) == 2
    assert image.config_digest == manifest["config"]["digest"]
    assert image.config["rootfs"]["diff_ids"] == image.diff_ids
    store = build.store
    for d in [image.manifest_digest, image.config_digest, *(l["digest"] for l in image.layers)]:
        assert store.verify(d, full=True)
    for layer in image.layers:
        assert build.records[f"fetch:{layer['digest'][7:19]}"].outputs == {"blob": layer["digest"]}
    assert {r.status for r in build.report} == {"ran"} and len(build.report) == 3

    again = new_build(tmp_path / "cache")
    assert run_fetch(again, spec) == 0
    assert {r.status for r in again.report} == {"cached"} and len(again.report) == 3


def test_a_tag_costs_one_head_when_its_manifest_is_cached(pushed, registry, tmp_path):
    proxy = Proxy(registry.url).start()
    try:
        spec = BuildSpec(image=f"{proxy.host}/fetchtest/one:v1")
        assert run_fetch(new_build(tmp_path / "cache"), spec) == 0
        proxy.seen.clear()
        build = new_build(tmp_path / "cache")
        assert run_fetch(build, spec) == 0
        assert [(s.method, s.path) for s in proxy.seen] == [("GET", "/v2/"), ("HEAD", "/v2/fetchtest/one/manifests/v1")]
        proxy.seen.clear()
        pinned = BuildSpec(image=f"{proxy.host}/fetchtest/one@{pushed['one']['digest']}", name="pinned")
        assert run_fetch(new_build(tmp_path / "cache"), pinned) == 0
        assert proxy.seen == []  # pinned by digest, all in the store: no request at all
    finally:
        proxy.stop()


def test_index_platform_selection(pushed, tmp_path):
    ref = f"{pushed['host']}/fetchtest/multi:v1"
    arm = fetch.resolve(new_build(tmp_path / "c"), BuildSpec(image=ref, platform="linux/arm64"))
    assert arm.manifest_digest == pushed["arm"]["digest"] and arm.platform == "linux/arm64/v8"
    assert arm.index_digest is not None and arm.config["architecture"] == "arm64"
    amd = fetch.resolve(new_build(tmp_path / "c"), BuildSpec(image=ref, platform="linux/amd64"))
    assert amd.manifest_digest == pushed["amd"]["digest"] and amd.platform == "linux/amd64"
    assert amd.index_digest == arm.index_digest
    host = fetch.resolve(new_build(tmp_path / "c"), BuildSpec(image=ref))
    assert host.platform == str(fetch.oci_manifest.host_platform()).replace("linux/arm64", "linux/arm64/v8")
    with pytest.raises(BuildError) as exc:
        fetch.resolve(new_build(tmp_path / "c"), BuildSpec(image=ref, platform="linux/s390x"))
    assert str(exc.value) == (f"no matching platform: {ref} has no image for linux/s390x "
                              f"(it has: linux/amd64, linux/arm64/v8); pick one with platform=OS/ARCH")


def test_single_platform_image_for_another_platform(pushed, tmp_path):
    ref = f"{pushed['host']}/fetchtest/one:v1"
    with pytest.raises(BuildError, match=r"^no matching platform: .* is linux/amd64, not linux/arm64/v8; "
                                         r"build it with platform=linux/amd64$"):
        fetch.resolve(new_build(tmp_path / "c"), BuildSpec(image=ref, platform="linux/arm64/v8"))


def test_docker_schema2_image(pushed, tmp_path):
    image = fetch.resolve(new_build(tmp_path / "c"), BuildSpec(image=f"{pushed['host']}/fetchtest/docker:v1"))
    assert image.manifest["mediaType"] == DOCKER_MANIFEST
    assert image.config["rootfs"]["diff_ids"] == image.diff_ids
    assert [l["mediaType"] for l in image.layers][0] == "application/vnd.docker.image.rootfs.diff.tar.gzip"


def test_docker_manifest_list(pushed, tmp_path):
    ref = f"{pushed['host']}/fetchtest/dockerlist:v1"
    image = fetch.resolve(new_build(tmp_path / "c"), BuildSpec(image=ref, platform="linux/arm64/v8"))
    assert image.manifest["mediaType"] == DOCKER_MANIFEST and image.platform == "linux/arm64/v8"
    index = json.loads(Store(tmp_path / "c").path(image.index_digest).read_bytes())
    assert index["mediaType"] == DOCKER_LIST
    with pytest.raises(BuildError, match=r"\(it has: linux/amd64, linux/arm64/v8\)"):
        fetch.resolve(new_build(tmp_path / "c"), BuildSpec(image=ref, platform="linux/riscv64"))


def test_insecure_registries_setting_is_checked(tmp_path):
    build = new_build(tmp_path / "c")
    build.context["config"] = {"insecure_registries": "10.0.0.5:5000"}
    with pytest.raises(BuildError, match=r"insecure_registries in banger's config must be a list"):
        fetch.resolve(build, BuildSpec(image="10.0.0.5:5000/x:y"))
    build.context["config"] = {"insecure_registries": ["10.0.0.5:5000"]}
    assert fetch.insecure_registries(build) == ["10.0.0.5:5000"]


def test_mislabelled_manifest_is_rejected(pushed, registry, tmp_path):
    proxy = Proxy(registry.url, manifest_type=DOCKER_MANIFEST).start()
    try:
        with pytest.raises(BuildError, match=rf"served as {re.escape(DOCKER_MANIFEST)} but the body says {re.escape(OCI_MANIFEST)}; "
                                             "refusing a mislabelled manifest$"):
            fetch.resolve(new_build(tmp_path / "c"), BuildSpec(image=f"{proxy.host}/fetchtest/one:v1"))
    finally:
        proxy.stop()


def test_corrupt_layer_fails_the_step_and_caches_nothing(pushed, registry, tmp_path):
    proxy = Proxy(registry.url).start()
    layer = pushed["one_manifest"]["layers"][1]
    proxy.corrupt.add(layer["digest"])
    try:
        build = new_build(tmp_path / "cache")
        assert run_fetch(build, BuildSpec(image=f"{proxy.host}/fetchtest/one:v1")) != 0
        assert build.error.startswith("digest mismatch: ") and "nothing was cached" in build.error
        assert not build.store.path(layer["digest"]).exists()
        assert f"fetch:{layer['digest'][7:19]}" not in build.records
        assert not list((build.store.root / "staging").glob("partial-*"))
    finally:
        proxy.stop()


def test_tag_moves_are_followed(registry, tmp_path):
    need("skopeo")
    ref = f"{registry.host}/fetchtest/moving:latest"
    make_image(tmp_path / "a", "t", {"a": b"first"})
    push(tmp_path / "a", "t", ref)
    first = fetch.resolve(new_build(tmp_path / "cache"), BuildSpec(image=ref))
    make_image(tmp_path / "b", "t", {"a": b"second"})
    push(tmp_path / "b", "t", ref)
    second = fetch.resolve(new_build(tmp_path / "cache"), BuildSpec(image=ref))
    assert first.manifest_digest != second.manifest_digest
    remembered = tmp_path / "cache" / "refs" / registry.host.replace(":", "%3A") / "fetchtest/moving/latest.json"
    assert json.loads(remembered.read_text())["digest"] == second.manifest_digest


def test_offline_warm_cache_uses_the_remembered_digest(tmp_path):
    need("docker-registry", "skopeo")
    reg = devregistry.start(tmp_path / "reg")
    ref = f"{reg.host}/offline/img:v1"
    try:
        two_layer_image(tmp_path / "layout", "v1")
        push(tmp_path / "layout", "v1", ref)
        online = new_build(tmp_path / "cache")
        assert run_fetch(online, BuildSpec(image=ref)) == 0
    finally:
        reg.stop()
    logs: list[str] = []
    offline = new_build(tmp_path / "cache", logs)
    assert run_fetch(offline, BuildSpec(image=ref)) == 0
    image = offline.context["image"]
    assert image.offline and image.manifest_digest == online.context["image"].manifest_digest
    assert {r.status for r in offline.report} == {"cached"}
    lines = [l for l in logs if "offline" in l]
    assert len(lines) == 1 and f"registry {reg.host} is unreachable" in lines[0]
    assert f"building {ref} offline from {image.manifest_digest}, which the tag resolved to on " in lines[0]

    with pytest.raises(BuildError, match=rf"^registry {reg.host} is unreachable"):  # never resolved before
        fetch.resolve(new_build(tmp_path / "cache"), BuildSpec(image=f"{reg.host}/offline/other:v1"))


def test_oci_layout_source(pushed, tmp_path):
    base: Path = pushed["base"]
    build = new_build(tmp_path / "cache")
    spec = BuildSpec(image=f"oci-layout:{base / 'one'}:v1")
    assert run_fetch(build, spec) == 0
    image = build.context["image"]
    assert (image.source, image.name, image.manifest_digest) == ("oci-layout", "one-v1", pushed["one"]["digest"])
    assert all(build.store.verify(l["digest"], full=True) for l in image.layers)
    arm = fetch.resolve(new_build(tmp_path / "cache"), BuildSpec(image=f"oci-layout:{base / 'multi'}:both",
                                                                 platform="linux/arm64"))
    assert arm.manifest_digest == pushed["arm"]["digest"]
    with pytest.raises(BuildError, match=r"holds 3 images \(tags: amd, arm, both\); pick one with oci-layout:DIR:TAG$"):
        fetch.resolve(new_build(tmp_path / "c2"), BuildSpec(image=f"oci-layout:{base / 'multi'}"))
    with pytest.raises(BuildError, match=r"no tag 'nope' in the OCI layout .* \(it has: v1\)"):
        fetch.resolve(new_build(tmp_path / "c2"), BuildSpec(image=f"oci-layout:{base / 'one'}:nope"))
    with pytest.raises(BuildError, match=r"is not an OCI image layout"):
        fetch.resolve(new_build(tmp_path / "c2"), BuildSpec(image=f"oci-layout:{tmp_path}"))


def test_oci_layout_with_tampered_blobs(pushed, tmp_path):
    layout = tmp_path / "layout"
    shutil.copytree(pushed["base"] / "one", layout)
    manifest = layout / "blobs" / "sha256" / pushed["one"]["digest"][7:]
    layer = pushed["one_manifest"]["layers"][0]["digest"]
    (layout / "blobs" / "sha256" / layer[7:]).write_bytes(b"tampered")
    build = new_build(tmp_path / "cache")
    assert run_fetch(build, BuildSpec(image=f"oci-layout:{layout}:v1")) != 0
    assert build.error.startswith(f"blob {layer} in the OCI layout {layout} is corrupt (")
    assert not build.store.path(layer).exists()
    manifest.write_bytes(manifest.read_bytes().replace(b'"layers"', b'"layers" '))
    with pytest.raises(BuildError, match=r"^digest mismatch: manifest sha256:.* hashes to sha256:.*; nothing was cached$"):
        fetch.resolve(new_build(tmp_path / "c2"), BuildSpec(image=f"oci-layout:{layout}:v1"))


def test_layout_descriptor_media_type_must_match_the_manifest(pushed, tmp_path):
    layout = tmp_path / "layout"
    shutil.copytree(pushed["base"] / "one", layout)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["mediaType"] = DOCKER_MANIFEST
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(BuildError, match=rf"was declared {re.escape(DOCKER_MANIFEST)} but is {re.escape(OCI_MANIFEST)}; refusing"):
        fetch.resolve(new_build(tmp_path / "c"), BuildSpec(image=f"oci-layout:{layout}:v1"))
