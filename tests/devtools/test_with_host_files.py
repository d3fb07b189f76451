"""with_host_files copies a layout with hard links and adds a layer: the source layout (a shared
test fixture) must come out byte for byte as it was."""
from __future__ import annotations

import json

from banger.devtools import debian_image
from tests.support_registry import make_image


def snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_source_layout_is_left_as_it_was(tmp_path):
    source = tmp_path / "layout"
    make_image(source, "v1", {"etc/os-release": b"ID=small\n"})
    before = snapshot(source)
    dest = debian_image.with_host_files(source, tmp_path / "with-files", files=("etc/hostname",))
    assert snapshot(source) == before
    index = json.loads((dest / "index.json").read_text())
    manifest = json.loads((dest / "blobs/sha256" / index["manifests"][0]["digest"].split(":")[1]).read_text())
    assert len(manifest["layers"]) == len(json.loads(
        (source / "blobs/sha256" / json.loads((source / "index.json").read_text())["manifests"][0]["digest"]
         .split(":")[1]).read_text())["layers"]) + 1
