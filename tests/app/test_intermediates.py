"""The intermediate disk images (ext4's and inject's, each read only by the next step) are dropped
once a build is done, like trees: the cache keeps ownership's image (where a template edit starts)
and the final rootfs. A step that needs a dropped one again remakes it from its record, and
nothing else notices: the up-to-date check, --check, export/import and the remote cache."""
from __future__ import annotations

import dataclasses

from banger.app import build as build_app
from banger.app import cache_archive, check
from banger.core import images
from banger.core.records import intermediates
from banger.core.store import Store
from banger.kernel import sources
from tests.support_builds import small_build  # noqa: F401  (a fixture)
from tests.support_kernel import make_kernel_tree


def outputs(store: Store, image: images.ImageRecord) -> dict[str, dict[str, str]]:
    return {s["step"]: store.get_record(s["key"]).outputs for s in image.steps}


def test_a_build_keeps_ownership_image_and_the_rootfs_and_drops_the_rest(small_build):
    dirs, env, spec = small_build
    first = build_app.run_build(spec, dirs, log=lambda m: None)
    store = Store(dirs.cache)
    made = outputs(store, first)
    assert not store.path(made["ext4"]["image"]).exists()
    assert not store.path(made["inject"]["image"]).exists()
    assert store.path(made["ownership"]["image"]).exists() and store.path(first.artifacts["rootfs"]).exists()

    again = build_app.run_build(spec, dirs, log=lambda m: None)
    assert {s["status"] for s in again.steps} == {"cached"} and again.artifacts == first.artifacts


def test_a_step_that_needs_a_dropped_image_remakes_it_from_its_record(small_build, tmp_path):
    dirs, env, spec = small_build
    first = build_app.run_build(spec, dirs, log=lambda m: None)
    store = Store(dirs.cache)
    made = outputs(store, first)
    # ownership reruns (its record is gone): it reads ext4's image, remade from the tree's layers
    store.remove_record(next(s["key"] for s in first.steps if s["step"] == "ownership"))
    said: list[str] = []
    again = build_app.run_build(spec, dirs, log=said.append)
    status = {s["step"]: s["status"] for s in again.steps}
    assert status["ext4"] == "cached" and status["ownership"] == "ran" and status["inject"] == "cached"
    assert "remaking ext4's output (not in the cache any more)" in said
    assert outputs(store, again)["ownership"] == made["ownership"] and again.artifacts == first.artifacts
    assert not store.path(made["ext4"]["image"]).exists()  # dropped again

    # another kernel: stage-kernel reruns on inject's image, remade from ownership's
    sources.import_dir(dirs, "k2", make_kernel_tree(tmp_path / "kernel-src-2", "6.1.0-98-amd64"))
    said.clear()
    other = build_app.run_build(dataclasses.replace(spec, kernel="k2", name="small-k2"), dirs, log=said.append)
    status = {s["step"]: s["status"] for s in other.steps}
    assert status["inject"] == "cached" and status["stage-kernel"] == "ran"
    assert "remaking inject's output (not in the cache any more)" in said
    assert not store.path(made["inject"]["image"]).exists()


def test_check_rebuilds_every_step_when_intermediates_were_dropped(small_build):
    dirs, env, spec = small_build
    first = build_app.run_build(spec, dirs, log=lambda m: None)
    result = check.check_reproducible(spec, dirs)
    assert result["identical"], result["differences"]
    assert {"ext4", "ownership", "inject", "stage-kernel"} <= set(result["checked"])
    store = Store(dirs.cache)
    assert not any(store.path(d).exists() for s in first.steps for d in intermediates(store.get_record(s["key"])))


def test_an_export_without_the_intermediates_imports_fully_cached(small_build, tmp_path):
    dirs, env, spec = small_build
    first = build_app.run_build(spec, dirs, log=lambda m: None)
    archive = tmp_path / "small.tar.zst"
    cache_archive.export_image(Store(dirs.cache), "small", archive)
    home_b = dataclasses.replace(dirs, cache=tmp_path / "b")
    result = cache_archive.import_file(Store(home_b.cache), archive)
    assert result["refused"] == [] and result["images"] == ["small"]
    again = build_app.run_build(spec, home_b, log=lambda m: None)
    assert {s["status"] for s in again.steps} == {"cached"} and again.artifacts == first.artifacts


def test_a_dropped_image_a_step_is_reading_stays(tmp_path):
    store = Store(tmp_path / "cache")
    staged = tmp_path / "cache" / "staging" / "image"
    staged.write_bytes(b"an intermediate disk image")
    digest = store.ingest_file(staged)
    with store.using([digest]):
        assert not store.drop(digest) and store.path(digest).exists()
    assert store.drop(digest) and not store.path(digest).exists()



def test_an_image_passed_through_by_a_module_less_kernel_is_kept_as_the_rootfs(small_build, tmp_path):
    """With a kernel that has no modules (`kernel build`), stage-kernel's rootfs is inject's image
    itself: the same store object is then a final output, and stays."""
    dirs, env, spec = small_build
    sources.import_dir(dirs, "bare", make_kernel_tree(tmp_path / "bare-src", "6.1.0-97-amd64", modules=False,
                                                      initrd=False))
    built = build_app.run_build(dataclasses.replace(spec, kernel="bare", name="small-bare"), dirs,
                                log=lambda m: None)
    store = Store(dirs.cache)
    made = outputs(store, built)
    assert made["stage-kernel"]["rootfs"] == made["inject"]["image"] == built.artifacts["rootfs"]
    assert store.path(built.artifacts["rootfs"]).exists() and store.verify(built.artifacts["rootfs"], full=True)
    again = build_app.run_build(dataclasses.replace(spec, kernel="bare", name="small-bare"), dirs,
                                log=lambda m: None)
    assert {s["status"] for s in again.steps} == {"cached"}
