"""Flatten step: apply an image's layers, in order, into a directory tree plus an fsmeta file.

Unprivileged: the tree gets safe permissions (see rootfs_tree) and everything an unprivileged
extraction loses (owners, set-id bits, xattrs, device nodes, hardlink groups) goes to fsmeta.
The record is keyed by the OCI ChainID of the layer stack, so two images with the same layers
(whatever their compression or manifest) share one flattened tree.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from banger.oci import fsmeta
from banger.engine.tasks import Build, StepRun, step_task
from banger.core.errors import BuildError
from banger.oci.layer_reader import LayerStream
from banger.oci.rootfs_tree import Tree
from banger.engine.spec import BuildSpec
from banger.oci.tar_apply import LayerApplier, LayerContentError

VERSION = "1"
EXPANSION = 4  # a flattened tree is about 2.5-3.5x its gzip layers; room is checked for this much


@dataclass
class FlattenStats:
    layers: int
    files: int
    bytes: int  # regular file data written
    paths: int
    seconds: float
    content: dict[int, str] = field(default_factory=dict)  # inode -> digest, see Tree.record_content


def chain_id(diff_ids: Sequence[str]) -> str:
    """OCI ChainID: ChainID(L0) = DiffID(L0); ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln))."""
    if not diff_ids:
        raise BuildError("the image has no layers; nothing to flatten")
    chain = diff_ids[0]
    for diff_id in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
    return chain


def flatten_layers(layers: Sequence[tuple[Path, str, str]], tree_dir: Path, meta_path: Path,
                   room: int | None = None) -> FlattenStats:
    """Apply `layers` = [(blob path, media type, diff_id), ...] into the new directory `tree_dir`
    and write the fsmeta file `meta_path`. Raises BuildError (one line) on bad or hostile input,
    or when the files would take more than `room` bytes (None: no limit); the caller discards
    `tree_dir` then."""
    start = time.monotonic()
    tree = Tree(tree_dir, room)
    files = data = 0
    try:
        for number, (path, media_type, diff_id) in enumerate(layers, 1):
            label = f"layer {number}/{len(layers)} ({diff_id[:19]})"
            applier = LayerApplier(tree, number, label)
            with LayerStream(Path(path), media_type, diff_id, label) as stream:
                try:
                    applier.apply(stream)
                except LayerContentError:
                    stream.finish()  # a corrupt blob explains a bad member better: report that first
                    raise
                stream.finish()
            files += applier.files
            data += applier.bytes
        entries = tree.entries()
        fsmeta.write(Path(meta_path), entries)
    finally:
        tree.close()
    return FlattenStats(len(layers), files, data, len(entries), round(time.monotonic() - start, 3), tree.content)


def tasks(build: Build, spec: BuildSpec) -> Iterator[dict]:
    def image():
        try:
            return build.context["image"]
        except KeyError:
            raise BuildError("internal: the image was not resolved before flatten") from None

    def inputs() -> dict:
        diff_ids = list(image().diff_ids)
        return {"chain_id": chain_id(diff_ids), "layers": diff_ids}

    def work(run: StepRun) -> dict[str, str]:
        """flatten the image layers into a tree and its fsmeta"""
        img = image()
        if len(img.layers) != len(img.diff_ids):
            raise BuildError(f"the image manifest has {len(img.layers)} layers but its config lists "
                             f"{len(img.diff_ids)} diff_ids; the image is corrupt")
        blobs = [(run.path(desc["digest"]), desc["mediaType"], diff_id)
                 for desc, diff_id in zip(img.layers, img.diff_ids)]
        compressed = sum(int(desc.get("size", 0)) for desc in img.layers)
        with run.store.tree_staging(compressed * EXPANSION) as tree_stage:
            tree_dir, meta_path = tree_stage / "rootfs", run.stage / "fsmeta.jsonl"
            stats = flatten_layers(blobs, tree_dir, meta_path, run.store.tree_room(tree_stage))
            run.info.update(layers=stats.layers, files=stats.files, bytes=stats.bytes, paths=stats.paths,
                            flatten_seconds=stats.seconds)
            return {"tree": run.store.ingest_tree(tree_dir, stats.content), "meta": run.store.ingest_file(meta_path)}

    yield step_task(build, name="flatten", version=VERSION, work=work, inputs=inputs, deps=("fetch",))
