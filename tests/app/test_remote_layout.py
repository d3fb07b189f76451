"""The encodings of remote_layout on their own: a sparse disk image travels as its extents and
comes back with the same digest and its holes; a forged extent map is refused in one line."""
from __future__ import annotations

import json
import os

import pytest
import zstandard

from banger.app import remote_layout as layout
from banger.app.archive_io import ArchiveError
from banger.core.store import Store


def sparse_image(path, size: int = 64 << 20) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in (0, 20 << 20, size - 4096 - 10):
            f.seek(offset)
            f.write(os.urandom(4096 + 10))


def test_a_sparse_image_round_trips_as_its_extents_holes_and_all(tmp_path):
    store = Store(tmp_path / "cache")
    src = tmp_path / "disk.img"
    sparse_image(src)
    digest = store.ingest_file(src)  # blake3, like banger's disk images
    stage = tmp_path / "stage"
    stage.mkdir()
    layer = layout.encode(store, "image", digest, stage)
    assert layer.descriptor["mediaType"].endswith("extents+zstd")
    assert layer.path.stat().st_size < 64 << 10  # the holes did not travel
    out = layout.decode(layer.path, digest, "extents+zstd", 64 << 20, stage)
    assert out.stat().st_size == 64 << 20 and out.stat().st_blocks * 512 < 1 << 20
    again = layout.encode(store, "image", digest, stage)
    assert again.descriptor["digest"] == layer.descriptor["digest"]  # deterministic: a re-push finds it


@pytest.mark.parametrize("extents, why", [([[0, 10], [5, 10]], "overlaps"), ([[0, 10], [100, 1 << 30]], "past the end")])
def test_a_forged_extent_map_is_refused(tmp_path, extents, why):
    header = json.dumps({"size": 1 << 20, "extents": extents}).encode()
    body = len(header).to_bytes(8, "big") + header + b"x" * 20
    layer = tmp_path / "layer"
    layer.write_bytes(zstandard.ZstdCompressor().compress(body))
    with pytest.raises(ArchiveError, match=why):
        layout.decode(layer, "blake3:" + "0" * 64, "extents+zstd", 1 << 20, tmp_path)
